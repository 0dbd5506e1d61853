"""The default engine: the model in this process, run by transformers.

Packed batches by default (:mod:`qwen3_retrieval.kernels.packed`); padded ones when the caller names an attention
kernel (:mod:`qwen3_retrieval.kernels.padded`). Concurrent calls are merged into shared runs
(:mod:`qwen3_retrieval.kernels.microbatch`), one run at a time per model, so callers never fight over cores; a
run goes on the calling thread when it can (see there which thread runs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import BatchPolicy
from qwen3_retrieval.engines import RerankPrompts, finish_progress
from qwen3_retrieval.kernels import compiled, packed_decoder
from qwen3_retrieval.kernels.compiled import RegionSwitch
from qwen3_retrieval.kernels.forking import compute_section
from qwen3_retrieval.kernels.fused import fuse_rms_norms, pack_linears
from qwen3_retrieval.kernels.microbatch import MicroBatcher
from qwen3_retrieval.kernels.packed import PromptGroup, last_hidden_packed
from qwen3_retrieval.kernels.packed_attention import register_packed_attention
from qwen3_retrieval.kernels.padded import last_hidden_padded
from qwen3_retrieval.loading import LoadedEmbedding, pretrained
from qwen3_retrieval.options import EmbedderOptions, ModelOptions, RerankerOptions
from qwen3_retrieval.prompts import EOS_TOKEN
from qwen3_retrieval.tokenization import TextTokenizer


class _Call(NamedTuple):
    """One caller's work: a shared prefix (empty for embedding) and the sequences after it."""

    prefix: list[int]
    sequences: Sequence[Sequence[int]]
    policy: BatchPolicy
    progress: tqdm | None


class _Runner:
    """Runs calls of one backbone, merging the ones that arrive together."""

    def __init__(
        self, backbone: torch.nn.Module, pad_id: int, device: torch.device, switch: RegionSwitch | None = None
    ) -> None:
        self.backbone, self.pad_id, self.device = backbone, pad_id, device
        self.switch = switch  # the element-wise regions packed batches run (None: eager)
        self.batcher: MicroBatcher[_Call, torch.Tensor] = MicroBatcher(
            self._run, key=lambda call: call.policy, wait_s=lambda call: call.policy.batch_wait_s
        )

    def warm_up(self) -> None:
        """Run one short packed sequence now, at load, so that a process's first call computes as every later one.

        Why: the first forward pass of a process sometimes rounded differently from every later one (with two
        threads, in a few processes out of ten), beyond the 1e-5 the references allow on a random-weight model.
        One pass of a few tokens anywhere in the process, in any thread, was enough for every call to agree: some
        process-wide state of the CPU kernels is set up lazily by the first pass.
        """
        regions = self.switch.current if self.switch is not None else None
        with compute_section():
            last_hidden_packed(
                self.backbone,
                [PromptGroup([], [[self.pad_id] * 8])],
                batch_tokens=8,
                device=self.device,
                regions=regions,
            )

    def _submit(self, call: _Call) -> torch.Tensor:
        if not call.policy.micro_batch:  # each call alone, in the caller's thread
            return self._run([call])[0]
        return self.batcher.submit(call)

    async def _asubmit(self, call: _Call) -> torch.Tensor:
        if not call.policy.micro_batch:
            return (await asyncio.to_thread(self._run, [call]))[0]
        return await self.batcher.asubmit(call)

    def _run(self, calls: list[_Call]) -> list[torch.Tensor]:
        """Run ``calls`` (one policy) together; return each call's last-token states."""
        with compute_section():  # no fork splits a batch (see qwen3_retrieval.kernels.forking)
            return self._run_calls(calls)

    def _run_calls(self, calls: list[_Call]) -> list[torch.Tensor]:
        policy = calls[0].policy
        # A lone call keeps its progress bar; merged calls finish theirs when their rows are done.
        progress = calls[0].progress if len(calls) == 1 else None
        if policy.layout == "packed":
            # Read once: every batch of this call runs the same regions, even if a compile lands meanwhile.
            regions = self.switch.current if self.switch is not None else None
            groups = [PromptGroup(call.prefix, call.sequences) for call in calls]
            if not any(call.prefix for call in calls):  # embedding: one group, so lengths sort across calls
                groups = [PromptGroup([], [s for call in calls for s in call.sequences])]
            hidden = last_hidden_packed(
                self.backbone,
                groups,
                batch_tokens=policy.batch_tokens,
                device=self.device,
                progress=progress,
                regions=regions,
            )
            results = list(torch.split(hidden, [len(call.sequences) for call in calls]))
        else:
            results = [self._padded(call, progress) for call in calls]
        for call in calls:
            if call.progress is not progress:
                finish_progress(call.progress, len(call.sequences))
        return results

    def _padded(self, call: _Call, progress: tqdm | None) -> torch.Tensor:
        return last_hidden_padded(
            self.backbone,
            call.prefix,
            call.sequences,
            pad_id=self.pad_id,
            policy=call.policy,
            device=self.device,
            progress=progress,
        )


class TransformersEmbedding(_Runner):
    """Last-token states of a transformers backbone (the raw pooled embedding)."""

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return each sequence's final hidden state at its last token."""
        return self._submit(_Call([], sequences, policy, progress))

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`: the event loop keeps running while the worker computes."""
        return await self._asubmit(_Call([], sequences, policy, None))


class TransformersScoring(_Runner):
    """P(yes) = sigmoid(w . h) at the last position, with w the yes-minus-no direction of the LM head.

    With ``policy.share_prefix`` the instruction-and-query prefix runs once per call, each document on top of it.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        direction: torch.Tensor,
        pad_id: int,
        device: torch.device,
        switch: RegionSwitch | None = None,
    ) -> None:
        super().__init__(backbone, pad_id, device, switch)
        self.direction = direction

    def score(self, prompts: RerankPrompts, policy: BatchPolicy, progress: tqdm | None) -> list[float]:
        """Return P(yes) of each ``prefix + tail``."""
        return self._probabilities(self._submit(self._call(prompts, policy, progress)))

    async def ascore(self, prompts: RerankPrompts, policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        return self._probabilities(await self._asubmit(self._call(prompts, policy, None)))

    @staticmethod
    def _call(prompts: RerankPrompts, policy: BatchPolicy, progress: tqdm | None) -> _Call:
        if not policy.share_prefix:
            return _Call([], prompts.whole(), policy, progress)
        return _Call(prompts.prefix, prompts.tails, policy, progress)

    def _probabilities(self, hidden: torch.Tensor) -> list[float]:
        with compute_section():
            return torch.sigmoid(hidden.float() @ self.direction).cpu().tolist()


# --- loading (see qwen3_retrieval.engines.registry) -----------------------------------------------------------


def load_embedding(options: EmbedderOptions, tokenizer: TextTokenizer) -> LoadedEmbedding:
    """Load an embedding model's weights into this process, packed for its batches."""
    backbone = pack(load_weights(options, "AutoModel"))
    eos_id = tokenizer.token_id(EOS_TOKEN) or 0  # pads are never attended to; any id does
    engine = TransformersEmbedding(backbone, eos_id, options.torch_device, region_switch(options, backbone))
    if options.attn_implementation is None:  # a named kernel runs padded batches, which the warm-up does not
        engine.warm_up()
    return LoadedEmbedding(tokenizer, engine, backbone.config.hidden_size)


def load_scoring(
    options: RerankerOptions, tokenizer: TextTokenizer, config: Any, yes_no: tuple[int, int] | None
) -> TransformersScoring:
    """Load a reranker's backbone and its yes-minus-no direction (``yes_no`` None: a converted classifier)."""
    if yes_no is None:
        model = load_weights(options, "AutoModelForSequenceClassification")
        direction = model.score.weight[0].float()
    else:
        model = load_weights(options, "AutoModelForCausalLM")
        head = model.get_output_embeddings().weight
        # softmax([z_no, z_yes])[1] == sigmoid((w_yes - w_no) . h); the difference is taken in float32 to avoid
        # cancellation in low precision.
        with compute_section():
            direction = head[yes_no[0]].float() - head[yes_no[1]].float()
    backbone = pack(getattr(model, model.base_model_prefix))  # the head, outside it, is only read above
    pad_id = tokenizer.token_id(EOS_TOKEN) or 0  # pads are never attended to; any id does
    direction = direction.detach().to(options.torch_device)
    engine = TransformersScoring(backbone, direction, pad_id, options.torch_device, region_switch(options, backbone))
    if options.attn_implementation is None:
        engine.warm_up()
    return engine


def load_weights(options: ModelOptions, auto_class: str) -> Any:
    """The model in eval mode on its device, its RMSNorms fused, attending the packed way unless a kernel is named."""
    # The packed layout owns attention (its own function, registered with transformers); a kernel the caller
    # names runs padded batches instead.
    attention = options.attn_implementation or register_packed_attention()
    with compute_section():  # torch copies the weights with its parallel kernels (see qwen3_retrieval.kernels.forking)
        model = pretrained(options, auto_class, dtype=options.torch_dtype, attn_implementation=attention)
        return fuse_rms_norms(model.to(options.torch_device).eval())


def region_switch(options: ModelOptions, backbone: Any) -> RegionSwitch | None:
    """The element-wise regions of ``backbone``'s packed passes, compiled in the background where ``compile=`` says.

    None where packed batches do not run the written-out decoder (a named attention kernel, another model).
    """
    if options.attn_implementation is not None or not packed_decoder.supports(backbone):
        return None
    config = backbone.config
    dtype = backbone.embed_tokens.weight.dtype
    sizes = {"head_dim": backbone.layers[0].self_attn.head_dim, "hidden": config.hidden_size}
    sizes["intermediate"] = config.intermediate_size
    enabled = compiled.resolve(options.compile, dtype, options.torch_device)
    return compiled.RegionSwitch(dtype, config.rms_norm_eps, sizes, compiled=enabled)


def pack(backbone: Any) -> Any:
    """``backbone`` with its float32 linears packed for oneDNN where that is faster (see ``kernels.fused``)."""
    with compute_section():  # packing copies the weights with torch's parallel kernels
        return pack_linears(backbone)
