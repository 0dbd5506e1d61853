"""The Qwen3-VL models in this process, run by transformers' ``Qwen3VLModel``: last-token states of prompts.

Prompts with images run as right-padded batches within the token budget, images' tokens counted like any
other, so memory follows ``batch_tokens`` (and the largest single prompt) whatever the inputs. The text
models' packed layout is bypassed here: the vision tower and M-RoPE positions come from transformers' own code,
which takes padded batches. Concurrent calls are merged as the text models' are
(:mod:`qwen3_retrieval.kernels.microbatch`, which says which thread runs a merged run); with
``batch_wait_ms=None`` each call runs in its caller's thread. Either way one batch runs at a time per model, so
calls never split the cores.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import BatchPolicy, run_in_batches, token_budget_batches
from qwen3_retrieval.engines import finish_progress
from qwen3_retrieval.kernels.forking import compute_section
from qwen3_retrieval.kernels.fused import fuse_rms_norms, pack_linears
from qwen3_retrieval.kernels.microbatch import MicroBatcher
from qwen3_retrieval.kernels.pooling import right_pad, take_positions
from qwen3_retrieval.loading import pretrained
from qwen3_retrieval.options import VisionOptions
from qwen3_retrieval.processors import answer_token_ids
from qwen3_retrieval.prompts import EOS_TOKEN
from qwen3_retrieval.tokenization import TextTokenizer
from qwen3_retrieval.vl.processors import VLSequence

MAX_PADDING = 0.25
"""Largest share of a batch that may be pad tokens (the text models' padded CPU rule)."""


class _Call(NamedTuple):
    """One caller's prompts, batch policy and progress bar."""

    sequences: Sequence[VLSequence]
    policy: BatchPolicy
    progress: tqdm | None


class TransformersVL:
    """Runs prompts with images through a ``Qwen3VLModel``; returns each prompt's final state at its last token.

    Args:
        model: The ``Qwen3VLModel`` (its output is after the final norm, as the official code pools it).
        pad_id: Any token id; pads are masked out.
        device: Where the model is.
        direction: For a reranker, ``W[yes] - W[no]`` of the LM head: the score is ``sigmoid(direction . h)``.
    """

    def __init__(
        self, model: torch.nn.Module, pad_id: int, device: torch.device, direction: torch.Tensor | None = None
    ) -> None:
        self.model, self.pad_id, self.device, self.direction = model, pad_id, device, direction
        config = getattr(model, "config")  # noqa: B009  (a Module attribute to mypy)
        self.image_id, self.video_id = int(config.image_token_id), int(config.video_token_id)
        # transformers 5 places images by token type; 4.57 finds them by id and takes no such argument.
        self.typed = "mm_token_type_ids" in inspect.signature(model.forward).parameters
        self.lock = threading.Lock()
        self.batcher: MicroBatcher[_Call, torch.Tensor] = MicroBatcher(
            self._run_calls, key=lambda call: call.policy, wait_s=lambda call: call.policy.batch_wait_s
        )
        _engines.add(self)

    def embed(self, sequences: Sequence[VLSequence], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return an ``(n, hidden)`` tensor of last-token states, rows in input order."""
        call = _Call(sequences, policy, progress)
        if not policy.micro_batch:  # this call alone, in the caller's thread
            return self._run_calls([call])[0]
        return self.batcher.submit(call)

    async def aembed(self, sequences: Sequence[VLSequence], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`: the event loop keeps running while the model computes."""
        call = _Call(sequences, policy, None)
        if not policy.micro_batch:
            return (await asyncio.to_thread(self._run_calls, [call]))[0]
        return await self.batcher.asubmit(call)

    def _run_calls(self, calls: list[_Call]) -> list[torch.Tensor]:
        """Run ``calls`` (one policy) as shared batches; return each call's rows."""
        rows = [sequence for call in calls for sequence in call.sequences]
        policy = calls[0].policy
        # A lone call keeps its progress bar; merged calls finish theirs when their rows are done.
        progress = calls[0].progress if len(calls) == 1 else None
        batches = token_budget_batches([len(s.ids) for s in rows], policy.batch_tokens, max_padding=MAX_PADDING)
        with self.lock, compute_section():
            hidden = run_in_batches(
                batches, lambda batch: self._run([rows[i] for i in batch]), device=self.device, progress=progress
            )
        for call in calls:
            if call.progress is not progress:
                finish_progress(call.progress, len(call.sequences))
        return list(torch.split(hidden, [len(call.sequences) for call in calls]))

    def score(self, sequences: Sequence[VLSequence], policy: BatchPolicy, progress: tqdm | None) -> list[float]:
        """Return ``sigmoid(direction . h)`` at each prompt's last token, in input order."""
        return self._probabilities(self.embed(sequences, policy, progress))

    async def ascore(self, sequences: Sequence[VLSequence], policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        return self._probabilities(await self.aembed(sequences, policy))

    def _probabilities(self, hidden: torch.Tensor) -> list[float]:
        assert self.direction is not None, "an embedding model has no yes/no direction"
        with compute_section():
            return torch.sigmoid(hidden.float() @ self.direction).cpu().tolist()

    @torch.inference_mode()
    def _run(self, rows: list[VLSequence]) -> torch.Tensor:
        input_ids, last = right_pad([row.ids for row in rows], self.pad_id)
        lengths = torch.tensor([len(row.ids) for row in rows])
        mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        images = [image for row in rows for image in row.images]
        videos = [video for row in rows for video in row.videos]
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask}
        # This batch's images and videos only; a reranker's query image stands in every pair, and is cut once.
        if images:
            cut = {id(image): image.patches() for image in images}
            inputs["pixel_values"] = torch.cat([cut[id(image)] for image in images])
            inputs["image_grid_thw"] = torch.tensor([image.grid for image in images])
        if videos:
            cut = {id(video): video.patches() for video in videos}
            inputs["pixel_values_videos"] = torch.cat([cut[id(video)] for video in videos])
            inputs["video_grid_thw"] = torch.tensor([video.grid for video in videos])
        if (images or videos) and self.typed:  # 1 marks image tokens, 2 video tokens
            inputs["mm_token_type_ids"] = (input_ids == self.image_id).int() + 2 * (input_ids == self.video_id).int()
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        hidden = self.model(**inputs, use_cache=False).last_hidden_state
        return take_positions(hidden, last)


# A fork may happen between two batches of a call (see qwen3_retrieval.kernels.forking.fork_point), while that call's
# thread holds its model's lock; the child would inherit the lock taken, with no thread to release it.
_engines: weakref.WeakSet[TransformersVL] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    for engine in list(_engines):
        engine.lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


def load_vl(options: VisionOptions, tokenizer: TextTokenizer, config: Any, reranker: bool) -> TransformersVL:
    """Load a Qwen3-VL checkpoint's weights into this process (a reranker's with its yes-minus-no direction)."""
    pad_id = tokenizer.token_id(EOS_TOKEN) or 0  # pads are masked out; any id does
    yes_no = answer_token_ids(tokenizer, options.model) if reranker else None
    with compute_section():  # torch copies the weights with its parallel kernels (see qwen3_retrieval.kernels.forking)
        auto_class = "AutoModelForImageTextToText" if reranker else "AutoModel"
        model = pretrained(
            options, auto_class, dtype=options.torch_dtype, attn_implementation=options.attn_implementation
        )
        model = model.to(options.torch_device).eval()
        direction = None
        if yes_no is not None:
            # The official score is sigmoid((W[yes] - W[no]) . h) on the backbone's last state; the difference
            # is taken in float32, as vLLM takes it (the official code rounds it to the model dtype).
            head = model.get_output_embeddings().weight
            direction = (head[yes_no[0]].float() - head[yes_no[1]].float()).detach().to(options.torch_device)
            model = model.model  # the head is only read above
        # The text models' exact fast paths: float32 RMSNorms through rms_norm, linears through packed oneDNN.
        model = pack_linears(fuse_rms_norms(model))
    return TransformersVL(model, pad_id, options.torch_device, direction)
