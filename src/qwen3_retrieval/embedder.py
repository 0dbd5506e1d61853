"""Qwen3-Embedding: tokenize (with exactly one trailing ``<|endoftext|>``), forward, last-token pool, normalise."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qwen3_retrieval._model import LazyModel, RuntimeProperties
from qwen3_retrieval._validation import check_instruction, check_positive_int, check_texts
from qwen3_retrieval.engines import EmbeddingEngine
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_INSTRUCTION, EOS_TOKEN, embedding_query
from qwen3_retrieval.tokenization import TextTokenizer

MIN_DIMENSIONS = 32
"""The smallest Matryoshka size the model cards support."""


@dataclass(eq=False)
class _LoadedEmbedding:
    tokenizer: TextTokenizer
    engine: EmbeddingEngine
    eos_id: int
    hidden_size: int


class Qwen3Embedder(RuntimeProperties):
    """Embeds texts with a Qwen3-Embedding model exactly as its model card does.

    Queries are prefixed with ``"Instruct: {instruction}\\nQuery:"``; documents get no prefix. All user text is
    read as plain characters. Each text ends in exactly one ``<|endoftext|>``, the final hidden state at that
    token is the embedding, optionally cut to ``dimensions`` (Matryoshka) and then L2-normalised.

    The token ids are built here for every engine: transformers in this process (the default), vLLM in this
    process (``engine="vllm"``) or a vLLM server (``base_url=``), which all return the same vectors.

    Constructing an embedder reads no files; the model loads on the first call and is shared by every embedder
    in the process with the same model, device, dtype, attention implementation and engine. Any number of
    threads and tasks may call one embedder, or several, at once.

    Args:
        model: Hub id or local folder of a Qwen3-Embedding checkpoint.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or None for the best available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, or None (bfloat16 on capable GPUs, else float32).
        dimensions: Output size, from 32 to the model's hidden size; None keeps the full size.
        instruction: Default task instruction for queries. An empty string embeds queries as they are.
        max_length: Longest token sequence, including the trailing ``<|endoftext|>``; longer texts are cut.
        normalize: L2-normalise the output (the model cards do; cosine similarity then equals dot product).
        batch_tokens: Token budget of one batch (real tokens when packed); None picks a default for the
            device.
        batch_wait_ms: Concurrent calls on one model (threads, async tasks, other objects) run merged in shared
            batches by one worker; while calls stream in, a batch waits up to this long for more (a lone call
            never waits). None runs each call alone in its caller's thread. In-process engines only.
        show_progress: Show a tqdm progress bar while embedding.
        attn_implementation: None (default) runs packed batches: sequences end to end, no padding, attention
            inside each. A transformers kernel named here (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``)
            runs padded batches instead.
        engine: ``"transformers"`` (default) or ``"vllm"`` (``vllm.LLM`` in this process, when installed).
        base_url: A vLLM server's OpenAI-compatible URL (``"http://host:8000/v1"``); only the tokenizer is loaded
            here. Start it with ``vllm serve MODEL --runner pooling``.
        api_key: The server's key (``--api-key``); None reads ``VLLM_API_KEY`` from the environment, if set.
            Never shown in a message or ``repr``, and never pickled (a pickled copy reads ``VLLM_API_KEY``).
        timeout: Seconds one server request may take in all, answer included (a deadline, not an idle limit).
        engine_options: Extra arguments for ``vllm.LLM`` with ``engine="vllm"`` (``tensor_parallel_size``,
            ``enforce_eager``, ``kv_cache_memory_bytes``…); by default the KV cache holds two ``max_length``
            prompts instead of most of the machine's memory.
    """

    _runtime: _EmbeddingRuntime

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_EMBEDDING_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        dimensions: int | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_length: int = 8192,
        normalize: bool = True,
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
        self._runtime = _EmbeddingRuntime(
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
        if dimensions is not None:
            check_positive_int(dimensions, "dimensions", minimum=MIN_DIMENSIONS)
        self.dimensions = dimensions
        self.instruction = check_instruction(instruction)
        self.normalize = bool(normalize)

    def __repr__(self) -> str:
        where = f"base_url={self.base_url!r}" if self.base_url else f"device='{self.device}'"
        return f"Qwen3Embedder(model={self.model!r}, {where}, dimensions={self.dimensions})"

    @property
    def dimension(self) -> int:
        """The size of the vectors this embedder returns (loads the model if needed)."""
        return self._output_size(self._runtime.state().hidden_size)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed documents (no instruction).

        Args:
            texts: The documents. An empty string is embedded as ``<|endoftext|>`` alone.

        Returns:
            A float32 array of shape ``(len(texts), dimension)``. An empty list gives shape ``(0, 0)`` without
            loading the model.
        """
        return self._embed(check_texts(texts))

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Embed queries, each prefixed with ``"Instruct: {instruction}\\nQuery:"``.

        Args:
            texts: The queries.
            instruction: Task instruction for this call; None uses the embedder's, ``""`` none at all.

        Returns:
            A float32 array of shape ``(len(texts), dimension)``.
        """
        return self._embed(self._query_texts(texts, instruction))

    def embed_query(self, text: str, instruction: str | None = None) -> np.ndarray:
        """Embed one query; see :meth:`embed_queries`. Returns a 1-D float32 array."""
        return self.embed_queries(check_texts([text], "text"), instruction)[0]

    async def aembed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Async :meth:`embed_documents`: a server engine's requests run on the event loop, a local one in a thread."""
        return await self._aembed(check_texts(texts))

    async def aembed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed_queries`."""
        return await self._aembed(self._query_texts(texts, instruction))

    async def aembed_query(self, text: str, instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed_query`."""
        return (await self.aembed_queries(check_texts([text], "text"), instruction))[0]

    def _query_texts(self, texts: Sequence[str], instruction: str | None) -> list[str]:
        items = check_texts(texts)
        task = self.instruction if instruction is None else check_instruction(instruction)
        return [embedding_query(text, task) for text in items]

    def _output_size(self, hidden_size: int) -> int:
        if self.dimensions is not None and self.dimensions > hidden_size:
            raise ValueError(
                f"dimensions={self.dimensions} is larger than the model's hidden size {hidden_size}; "
                f"use a value from {MIN_DIMENSIONS} to {hidden_size}, or None for the full size"
            )
        return self.dimensions or hidden_size

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        state = self._runtime.state()
        pooled = state.engine.embed(
            self._runtime.tokenize(texts), self._runtime.policy, self._runtime._progress(len(texts), "Embedding")
        )
        return self._finish(pooled, state.hidden_size)

    async def _aembed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        # Loading (on a first call) and tokenizing are CPU work: keep the event loop free meanwhile.
        sequences = await asyncio.to_thread(self._runtime.tokenize, texts)
        state = self._runtime.state()
        pooled = await state.engine.aembed(sequences, self._runtime.policy)
        return self._finish(pooled, state.hidden_size)

    def _finish(self, pooled: torch.Tensor, hidden_size: int) -> np.ndarray:
        # Matryoshka: truncate first, then normalise (QwenLM/Qwen3-Embedding#5), for every engine.
        vectors = pooled[:, : self._output_size(hidden_size)].float()
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()


class _EmbeddingRuntime(LazyModel[_LoadedEmbedding]):
    """Loading and tokenization for :class:`Qwen3Embedder`."""

    _kind = "embedding"

    def state(self) -> _LoadedEmbedding:
        return self._state()

    def _load(self) -> _LoadedEmbedding:
        tokenizer = TextTokenizer(self._load_tokenizer())
        eos_id = tokenizer.token_id(EOS_TOKEN)
        if eos_id is None:
            raise ValueError(f"{self.model!r} has no {EOS_TOKEN} token; is it a Qwen3-Embedding checkpoint?")
        engine: EmbeddingEngine
        if self.engine == "transformers":
            from transformers import AutoModel

            from qwen3_retrieval.engines.transformers import TransformersEmbedding

            backbone = self._load_weights(AutoModel)
            hidden_size = backbone.config.hidden_size
            engine = TransformersEmbedding(backbone, eos_id, self.device)
        elif self.engine == "http":
            from qwen3_retrieval.engines.vllm_http import HttpEmbedding

            hidden_size = self._load_config().hidden_size
            engine = HttpEmbedding(self._server(), hidden_size)
        else:
            from qwen3_retrieval.engines.vllm_local import VLLMEmbedding

            config = self._load_config()
            hidden_size = config.hidden_size
            options = self._vllm_options(config)
            engine = VLLMEmbedding(self.model, dtype=self.dtype, max_length=self.max_length, options=options)
        return _LoadedEmbedding(tokenizer=tokenizer, engine=engine, eos_id=eos_id, hidden_size=hidden_size)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Return token ids ending in exactly one ``<|endoftext|>``, at most ``max_length`` long.

        The text is read as plain characters and cut to ``max_length - 1`` tokens; the EOS is then appended here
        rather than by the tokenizer's post-processor, which early Qwen3-Embedding revisions lack
        (QwenLM/Qwen3-Embedding#54). Both give the same ids as the model card's ``truncation=True``.
        """
        state = self.state()
        return [[*ids, state.eos_id] for ids in state.tokenizer.plain(texts, limit=self.max_length - 1)]
