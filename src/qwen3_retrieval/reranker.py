"""Qwen3-Reranker: the model-card prompt, document-only truncation, and P(yes) from the last position."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qwen3_retrieval._model import LazyModel, RuntimeProperties
from qwen3_retrieval._validation import check_instruction, check_query, check_score_threshold, check_texts, check_top_n
from qwen3_retrieval.engines import ScoringEngine
from qwen3_retrieval.prompts import (
    DEFAULT_INSTRUCTION,
    DEFAULT_RERANKER_MODEL,
    EOS_TOKEN,
    NO_TOKEN,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    YES_TOKEN,
    rerank_document,
    rerank_head,
)
from qwen3_retrieval.tokenization import TextTokenizer


@dataclass(eq=False)
class _LoadedReranker:
    tokenizer: TextTokenizer
    engine: ScoringEngine
    prefix_ids: list[int]
    suffix_ids: list[int]


class Qwen3Reranker(RuntimeProperties):
    """Scores (query, document) pairs with a Qwen3-Reranker model exactly as its model card does.

    Each pair becomes the card's chat prompt (system judge prompt, ``<Instruct>: …\\n<Query>: …\\n<Document>: …``,
    assistant turn with an empty think block). The score is ``P(yes)`` from the ``yes``/``no`` logits at the
    last position, computed from those two rows of the head only (memory O(batch x hidden) instead of
    O(batch x length x vocab)). Converted single-logit checkpoints (``Qwen3ForSequenceClassification``,
    one label) are loaded too, with score ``sigmoid(logit)``, which is the same number.

    Over-long pairs lose the end of the document only; the instruction, query and assistant suffix are kept.
    Instruction, query and documents are read as plain text: a document containing ``<|im_end|>`` or ``yes``
    after a forged assistant turn cannot become part of the template.

    Memory is bounded by ``batch_tokens`` whatever the inputs: a batch holds at most that many tokens counted
    over whole prompts (the shared instruction-and-query prefix included in every row), the prefix's keys and
    values are stored once, and no layer's keys and values outlive that layer. A long query against many
    candidates therefore costs about what it costs against one, and a prompt longer than the budget runs
    alone, as the embedder would run it.

    Args:
        model: Hub id or local folder of a Qwen3-Reranker checkpoint (causal LM or converted seq-cls).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or None for the best available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, or None (bfloat16 on capable GPUs, else float32).
        instruction: Default task instruction.
        max_length: Longest prompt in tokens, template included.
        batch_tokens: Token budget of one batch (real tokens when packed); None picks a default for the
            device.
        batch_wait_ms: Concurrent calls on one model (threads, async tasks, other objects) run merged in shared
            batches by one worker; while calls stream in, a batch waits up to this long for more (a lone call
            never waits). None runs each call alone in its caller's thread. In-process engines only.
        show_progress: Show a tqdm progress bar while scoring.
        attn_implementation: None (default) runs packed batches: sequences end to end, no padding, attention
            inside each. A transformers kernel named here (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``)
            runs padded batches instead.
        engine: ``"transformers"`` (default) or ``"vllm"`` (``vllm.LLM`` in this process, when installed).
        base_url: A vLLM server's URL (``"http://host:8001/v1"``) started as the README shows; only the
            tokenizer is loaded here and the exact prompt ids are sent to its ``/classify``.
        api_key: The server's key (``--api-key``); None reads ``VLLM_API_KEY`` from the environment, if set.
            Never shown in a message or ``repr``, and never pickled (a pickled copy reads ``VLLM_API_KEY``).
        timeout: Seconds one server request may take in all, answer included (a deadline, not an idle limit).
        engine_options: Extra arguments for ``vllm.LLM`` with ``engine="vllm"`` (see :class:`Qwen3Embedder`).
    """

    _runtime: _RerankerRuntime

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_RERANKER_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_length: int = 8192,
        batch_tokens: int | None = None,
        batch_wait_ms: float | None = 2.0,
        show_progress: bool = False,
        attn_implementation: str | None = None,
        engine: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self._runtime = _RerankerRuntime(
            model,
            device=device,
            dtype=dtype,
            max_length=max_length,
            batch_tokens=batch_tokens,
            batch_wait_ms=batch_wait_ms,
            show_progress=show_progress,
            attn_implementation=attn_implementation,
            engine=engine,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            engine_options=engine_options,
        )
        self.instruction = check_instruction(instruction)

    def __repr__(self) -> str:
        where = f"base_url={self.base_url!r}" if self.base_url else f"device='{self.device}', dtype={self.dtype}"
        return f"Qwen3Reranker(model={self.model!r}, {where})"

    def score(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """Return ``P(yes)`` in [0, 1] for each document, in input order.

        Args:
            query: The search text; must not be empty.
            documents: The candidates. Empty strings are scored like any other document.
            instruction: Task instruction for this call; None uses the reranker's.

        Raises:
            ValueError: If the query is empty, or the instruction and query alone exceed ``max_length``.
            TypeError: If a document is not a string (the message names its index).
        """
        prompt = self._prompt(query, documents, instruction)
        if prompt is None:
            return []
        start, tails = prompt
        progress = self._runtime._progress(len(tails), "Reranking")
        return self._runtime.state().engine.score(start, tails, self._runtime.policy, progress)

    async def ascore(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """Async :meth:`score`: a server engine's requests run on the event loop, a local one in a thread."""
        prompt = await asyncio.to_thread(self._prompt, query, documents, instruction)  # may load the tokenizer
        if prompt is None:
            return []
        return await self._runtime.state().engine.ascore(*prompt, self._runtime.policy)

    def _prompt(
        self, query: str, documents: Sequence[str], instruction: str | None
    ) -> tuple[list[int], list[list[int]]] | None:
        docs = check_texts(documents, "documents")
        check_query(query)
        task = self.instruction if instruction is None else check_instruction(instruction)
        if not docs:
            return None
        return self._runtime.encode_parts(task, query, docs)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[int, float]]:
        """Return ``(index, score)`` pairs, best first: at most ``top_n``, none scoring below ``score_threshold``.

        Ties keep input order. This is the one place where the framework adapters' ``top_n`` and
        ``score_threshold`` are applied.

        Args:
            query: The search text; must not be empty.
            documents: The candidates.
            top_n: Keep at most this many; None keeps all.
            instruction: Task instruction for this call; None uses the reranker's, ``""`` an empty one.
            score_threshold: Drop documents whose score is below this probability (0 to 1); None keeps all.

        Raises:
            ValueError: If ``top_n`` is less than 1 or ``score_threshold`` is not a number in [0, 1].
        """
        selection = _checked_selection(top_n, score_threshold)  # before any scoring: bad input fails fast
        return _select(self.score(query, documents, instruction=instruction), *selection)

    async def arank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[int, float]]:
        """Async :meth:`rank`."""
        selection = _checked_selection(top_n, score_threshold)
        return _select(await self.ascore(query, documents, instruction=instruction), *selection)


def _checked_selection(top_n: int | None, score_threshold: float | None) -> tuple[int | None, float | None]:
    return check_top_n(top_n), check_score_threshold(score_threshold)


def _select(scores: list[float], top_n: int | None, score_threshold: float | None) -> list[tuple[int, float]]:
    ranked = sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)
    if score_threshold is not None:
        ranked = [(index, score) for index, score in ranked if score >= score_threshold]
    return ranked if top_n is None else ranked[:top_n]


class _RerankerRuntime(LazyModel[_LoadedReranker]):
    """Loading and prompt encoding for :class:`Qwen3Reranker`."""

    _kind = "reranker"

    def state(self) -> _LoadedReranker:
        return self._state()

    def _load(self) -> _LoadedReranker:
        tokenizer = TextTokenizer(self._load_tokenizer())
        config = self._load_config()
        seq_cls = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
        if seq_cls and config.num_labels != 1:
            raise ValueError(
                f"{self.model!r} is a sequence classifier with {config.num_labels} labels; a converted "
                "Qwen3-Reranker has exactly one (score = sigmoid(logit))"
            )
        yes_no = None if seq_cls else [_single_token_id(tokenizer, t, self.model) for t in (YES_TOKEN, NO_TOKEN)]
        engine: ScoringEngine
        if self.engine == "http":
            from qwen3_retrieval.engines.vllm_http import HttpScoring

            engine = HttpScoring(self._server())
        elif self.engine == "vllm":
            from qwen3_retrieval.engines.vllm_local import VLLMScoring

            engine = VLLMScoring(
                self.model,
                dtype=self.dtype,
                max_length=self.max_length,
                original=not seq_cls,
                options=self._vllm_options(config),
            )
        else:
            engine = self._transformers_engine(tokenizer, yes_no)
        return _LoadedReranker(
            tokenizer=tokenizer,
            engine=engine,
            prefix_ids=tokenizer.template(RERANK_PREFIX),
            suffix_ids=tokenizer.template(RERANK_SUFFIX),
        )

    def _transformers_engine(self, tokenizer: TextTokenizer, yes_no: list[int] | None) -> ScoringEngine:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from qwen3_retrieval.engines.transformers import TransformersScoring

        if yes_no is None:
            model = self._load_weights(AutoModelForSequenceClassification)
            direction = model.score.weight[0].float()
        else:
            model = self._load_weights(AutoModelForCausalLM)
            head = model.get_output_embeddings().weight
            # softmax([z_no, z_yes])[1] == sigmoid((w_yes - w_no) . h); the difference is taken in float32
            # to avoid cancellation in low precision.
            direction = head[yes_no[0]].float() - head[yes_no[1]].float()
        backbone = getattr(model, model.base_model_prefix)
        pad_id = tokenizer.token_id(EOS_TOKEN)  # pads are never attended to; any id does
        return TransformersScoring(backbone, direction.detach().to(self.device), pad_id or 0, self.device)

    def encode(self, instruction: str, query: str, documents: list[str]) -> list[list[int]]:
        """Return the prompt token ids of each (query, document) pair, documents cut to fit ``max_length``."""
        start, tails = self.encode_parts(instruction, query, documents)
        return [start + tail for tail in tails]

    def encode_parts(self, instruction: str, query: str, documents: list[str]) -> tuple[list[int], list[list[int]]]:
        """Return the ids every pair starts with, and each pair's own ids (document and suffix)."""
        state = self.state()
        # Read no more of a huge query than can fit: if the head alone fills max_length, there is no room anyway.
        cut = state.tokenizer.chars_needed(self.max_length)
        head = state.tokenizer.plain([rerank_head(instruction, query[:cut])], limit=self.max_length)[0]
        fixed = len(state.prefix_ids) + len(head) + len(state.suffix_ids)
        room = self.max_length - fixed
        if room < 1:
            raise ValueError(
                f"the instruction and query take {'at least ' if len(head) == self.max_length else ''}{fixed} "
                f"tokens with the prompt template, leaving no room for a document within "
                f"max_length={self.max_length}; shorten them or raise max_length"
            )
        cut = state.tokenizer.chars_needed(room)  # before the template's f-string copies a 50 MB document whole
        docs = state.tokenizer.plain([rerank_document(d[:cut]) for d in documents], limit=room)
        return state.prefix_ids + head, [doc + state.suffix_ids for doc in docs]


def _single_token_id(tokenizer: TextTokenizer, token: str, model: str) -> int:
    token_id = tokenizer.token_id(token)
    if token_id is None or tokenizer.plain([token]) != [[token_id]]:
        raise ValueError(
            f"{model!r}: {token!r} is not a single token in its tokenizer; is it a Qwen3-Reranker checkpoint?"
        )
    return token_id
