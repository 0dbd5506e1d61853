"""Qwen3-Embedding: one readable path per call, processor -> engine -> processor.

The processor (:mod:`qwen3_retrieval.processors`) turns texts into the model card's token ids and pooled states
into vectors; the engine (:mod:`qwen3_retrieval.engines`) runs the ids. This module wires them to the options.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from qwen3_retrieval._model import OptionView, SharedModel, off_the_loop
from qwen3_retrieval._validation import check_call_instruction, check_texts
from qwen3_retrieval.engines import EmbeddingEngine
from qwen3_retrieval.loading import LoadedEmbedding, load_embedding
from qwen3_retrieval.options import MIN_DIMENSIONS, EmbedderOptions, options_of
from qwen3_retrieval.processors import EmbeddingProcessor
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL

__all__ = ["MIN_DIMENSIONS", "Qwen3Embedder"]

_Parts = tuple[EmbeddingProcessor, EmbeddingEngine]


class Qwen3Embedder(SharedModel[EmbedderOptions, LoadedEmbedding, _Parts]):
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
        **options: The options of :class:`~qwen3_retrieval.options.EmbedderOptions` (``device=``,
            ``dimensions=``, ``base_url=``…), each documented there, once.

    Raises:
        ValueError: An option's value is not valid (the message names it and what is accepted).
        TypeError: An option is unknown, or a value has the wrong type.
    """

    dimensions = OptionView[int | None]("dimensions")
    normalize = OptionView[bool]("normalize")

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_EMBEDDING_MODEL, **options: Any) -> None:
        super().__init__(options_of(model, options, EmbedderOptions))

    def __repr__(self) -> str:
        where = f"base_url={self.base_url!r}" if self.base_url else f"device='{self.device}'"
        return f"Qwen3Embedder(model={self.model!r}, {where}, dimensions={self.dimensions})"

    @property
    def dimension(self) -> int:
        """The size of the vectors this embedder returns (loads the model if needed)."""
        return self.processor.dimension

    @property
    def processor(self) -> EmbeddingProcessor:
        """What turns texts into token ids and pooled states into vectors (loads the model if needed)."""
        return self.ready()[0]

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed documents (no instruction).

        Args:
            texts: The documents. An empty string is embedded as ``<|endoftext|>`` alone.

        Returns:
            A float32 array of shape ``(len(texts), dimension)``. An empty list gives shape ``(0, 0)`` without
            loading the model.
        """
        return self._embed(check_texts(texts), None, queries=False)

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Embed queries, each prefixed with ``"Instruct: {instruction}\\nQuery:"``.

        Args:
            texts: The queries.
            instruction: Task instruction for this call; None uses the embedder's, ``""`` none at all.

        Returns:
            A float32 array of shape ``(len(texts), dimension)``.
        """
        return self._embed(check_texts(texts), check_call_instruction(instruction), queries=True)

    def embed_query(self, text: str, instruction: str | None = None) -> np.ndarray:
        """Embed one query; see :meth:`embed_queries`. Returns a 1-D float32 array."""
        return self._embed(check_texts([text], "text"), check_call_instruction(instruction), queries=True)[0]

    async def aembed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Async :meth:`embed_documents`: a server engine's requests run on the event loop, no thread per call."""
        return await self._aembed(check_texts(texts), None, queries=False)

    async def aembed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed_queries`."""
        return await self._aembed(check_texts(texts), check_call_instruction(instruction), queries=True)

    async def aembed_query(self, text: str, instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed_query`."""
        return (await self._aembed(check_texts([text], "text"), check_call_instruction(instruction), queries=True))[0]

    def _embed(self, texts: list[str], instruction: str | None, *, queries: bool) -> np.ndarray:
        """The one embedding path: texts -> token ids -> pooled states -> vectors."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        processor, engine = self.ready()
        ids = processor.queries(texts, instruction) if queries else processor.documents(texts)
        pooled = engine.embed(ids, self.options.policy, self._progress(len(ids), "Embedding"))
        return processor.vectors(pooled)

    async def _aembed(self, texts: list[str], instruction: str | None, *, queries: bool) -> np.ndarray:
        """Async :meth:`_embed`: the same three steps, the engine's awaited."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        processor, engine = await self.aready()
        tokenize = (lambda: processor.queries(texts, instruction)) if queries else (lambda: processor.documents(texts))
        ids = await off_the_loop(tokenize, sum(map(len, texts)))
        return processor.vectors(await engine.aembed(ids, self.options.policy))

    def _load(self, options: EmbedderOptions) -> LoadedEmbedding:
        return load_embedding(options)

    def _build(self, loaded: LoadedEmbedding) -> _Parts:
        return EmbeddingProcessor(loaded.tokenizer, self.options, loaded.hidden_size), loaded.engine
