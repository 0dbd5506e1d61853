"""Qwen3-Embedding: tokenize (with exactly one trailing ``<|endoftext|>``), forward, last-token pool, normalise."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qwen3_retrieval._model import LazyModel, RuntimeProperties
from qwen3_retrieval._validation import check_instruction, check_positive_int, check_texts
from qwen3_retrieval.forward import last_hidden_batched
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_INSTRUCTION, EOS_TOKEN, embedding_query
from qwen3_retrieval.tokenization import TextTokenizer

MIN_DIMENSIONS = 32
"""The smallest Matryoshka size the model cards support."""


@dataclass(eq=False)
class _LoadedEmbedding:
    tokenizer: TextTokenizer
    backbone: torch.nn.Module
    eos_id: int
    pad_id: int
    hidden_size: int


class Qwen3Embedder(RuntimeProperties):
    """Embeds texts with a Qwen3-Embedding model exactly as its model card does.

    Queries are prefixed with ``"Instruct: {instruction}\\nQuery:"``; documents get no prefix. Each text ends
    in one ``<|endoftext|>`` (appended only if the tokenizer does not do it), the final hidden state at that
    token is the embedding, optionally cut to ``dimensions`` (Matryoshka) and then L2-normalised.

    Constructing an embedder reads no files; the model loads on the first call and is shared by every embedder
    in the process with the same model, device, dtype and attention implementation.

    Args:
        model: Hub id or local folder of a Qwen3-Embedding checkpoint.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or None for the best available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, or None (bfloat16 on capable GPUs, else float32).
        dimensions: Output size, from 32 to the model's hidden size; None keeps the full size.
        instruction: Default task instruction for queries. An empty string embeds queries as they are.
        max_length: Longest token sequence, including the trailing ``<|endoftext|>``; longer texts are cut.
        normalize: L2-normalise the output (the model cards do; cosine similarity then equals dot product).
        batch_tokens: Token budget of one padded batch; None picks a default for the device.
        show_progress: Show a tqdm progress bar while embedding.
        attn_implementation: Passed to transformers (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``);
            None picks ``"flash_attention_2"`` on CUDA in half precision when ``flash_attn`` is installed, else
            transformers' default (``"sdpa"``).
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
        show_progress: bool = False,
        attn_implementation: str | None = None,
    ) -> None:
        self._runtime = _EmbeddingRuntime(
            model,
            device=device,
            dtype=dtype,
            max_length=max_length,
            batch_tokens=batch_tokens,
            show_progress=show_progress,
            attn_implementation=attn_implementation,
        )
        if dimensions is not None:
            check_positive_int(dimensions, "dimensions", minimum=MIN_DIMENSIONS)
        self.dimensions = dimensions
        self.instruction = check_instruction(instruction)
        self.normalize = bool(normalize)

    def __repr__(self) -> str:
        return f"Qwen3Embedder(model={self.model!r}, device='{self.device}', dimensions={self.dimensions})"

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
        items = check_texts(texts)
        task = self.instruction if instruction is None else check_instruction(instruction)
        return self._embed([embedding_query(text, task) for text in items])

    def embed_query(self, text: str, instruction: str | None = None) -> np.ndarray:
        """Embed one query; see :meth:`embed_queries`. Returns a 1-D float32 array."""
        return self.embed_queries(check_texts([text], "text"), instruction)[0]

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
        size = self._output_size(state.hidden_size)
        sequences = self._runtime.tokenize(texts)
        pooled = last_hidden_batched(
            state.backbone,
            sequences,
            pad_id=state.pad_id,
            policy=self._runtime.policy,
            device=self.device,
            progress=self._runtime._progress(len(texts), "Embedding"),
        )
        # Matryoshka: truncate first, then normalise (QwenLM/Qwen3-Embedding#5).
        vectors = pooled[:, :size].float()
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()


class _EmbeddingRuntime(LazyModel[_LoadedEmbedding]):
    """Loading and tokenization for :class:`Qwen3Embedder`."""

    _kind = "embedding"

    def state(self) -> _LoadedEmbedding:
        return self._state()

    def _load(self) -> _LoadedEmbedding:
        from transformers import AutoModel

        tokenizer = TextTokenizer(self._load_tokenizer())
        eos_id = tokenizer.token_id(EOS_TOKEN)
        if eos_id is None:
            raise ValueError(f"{self.model!r} has no {EOS_TOKEN} token; is it a Qwen3-Embedding checkpoint?")
        backbone = self._load_weights(AutoModel)
        return _LoadedEmbedding(
            tokenizer=tokenizer,
            backbone=backbone,
            eos_id=eos_id,
            pad_id=eos_id,
            hidden_size=backbone.config.hidden_size,
        )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Return token ids ending in exactly one ``<|endoftext|>``, at most ``max_length`` long.

        The text is read as plain characters and cut to ``max_length - 1`` tokens; the EOS is then appended here
        rather than by the tokenizer's post-processor, which early Qwen3-Embedding revisions lack
        (QwenLM/Qwen3-Embedding#54). Both give the same ids as the model card's ``truncation=True``.
        """
        state = self.state()
        return [[*ids[: self.max_length - 1], state.eos_id] for ids in state.tokenizer.plain(texts)]
