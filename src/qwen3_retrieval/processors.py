"""What to compute, for every engine: text to token ids before the engine, its raw outputs to results after.

A processor holds a tokenizer and a model's options, never weights. The embedding processor builds the model
card's ids (the query instruction, plain-text tokenization, exactly one trailing ``<|endoftext|>``, truncation)
and turns pooled states into vectors (Matryoshka cut, then L2 normalisation). The reranking processor builds
the card's chat prompt with only the document cut to fit, and ranks the P(yes) scores (top-n, threshold).
Engines run the ids and nothing else, so every engine computes the same thing (see :mod:`qwen3_retrieval.engines`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qwen3_retrieval.engines import RerankPrompts
from qwen3_retrieval.errors import QueryTooLongError
from qwen3_retrieval.kernels.forking import compute_section
from qwen3_retrieval.options import MIN_DIMENSIONS, EmbedderOptions, RerankerOptions
from qwen3_retrieval.prompts import (
    EOS_TOKEN,
    NO_TOKEN,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    YES_TOKEN,
    embedding_query,
    rerank_document,
    rerank_head,
)
from qwen3_retrieval.tokenization import TextTokenizer


class EmbeddingProcessor:
    """Token ids of texts for a Qwen3-Embedding model, and vectors from its pooled states.

    Args:
        tokenizer: The checkpoint's tokenizer.
        options: The embedder's options (instruction, ``max_length``, ``dimensions``, ``normalize``).
        hidden_size: The model's output size.

    Raises:
        ValueError: The tokenizer has no ``<|endoftext|>``, or ``dimensions`` exceeds ``hidden_size``.
    """

    def __init__(self, tokenizer: TextTokenizer, options: EmbedderOptions, hidden_size: int) -> None:
        eos_id = tokenizer.token_id(EOS_TOKEN)
        if eos_id is None:
            raise ValueError(f"{options.model!r} has no {EOS_TOKEN} token; is it a Qwen3-Embedding checkpoint?")
        check_dimensions(options, hidden_size)
        self.tokenizer, self.options, self.eos_id = tokenizer, options, eos_id
        self.dimension = options.dimensions or hidden_size

    def documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Return each document's ids, ending in exactly one ``<|endoftext|>``, at most ``max_length`` long.

        The text is read as plain characters and cut to ``max_length - 1`` tokens; the EOS is appended here
        rather than by the tokenizer's post-processor, which early Qwen3-Embedding revisions lack
        (QwenLM/Qwen3-Embedding#54). Both give the same ids as the model card's ``truncation=True``.
        """
        return [[*ids, self.eos_id] for ids in self.tokenizer.plain(list(texts), limit=self.options.max_length - 1)]

    def queries(self, texts: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        """Return each query's ids: ``"Instruct: {instruction}\\nQuery:{text}"`` as a document.

        Args:
            texts: The queries.
            instruction: This call's instruction; None uses the options'. ``""`` embeds the text as it is.
        """
        task = self.options.instruction if instruction is None else instruction
        return self.documents([embedding_query(text, task) for text in texts])

    def vectors(self, pooled: torch.Tensor) -> np.ndarray:
        """Return float32 vectors: each pooled state cut to ``dimensions``, then normalised (if asked).

        Truncating first, then normalising, is the models' Matryoshka rule (QwenLM/Qwen3-Embedding#5).
        """
        return finished_vectors(pooled, self.dimension, self.options.normalize)


def check_dimensions(options: EmbedderOptions, hidden_size: int) -> None:
    """Raise ``ValueError`` if the options' Matryoshka ``dimensions`` exceed the model's ``hidden_size``."""
    if options.dimensions is not None and options.dimensions > hidden_size:
        raise ValueError(
            f"dimensions={options.dimensions} is larger than the model's hidden size {hidden_size}; "
            f"use a value from {MIN_DIMENSIONS} to {hidden_size}, or None for the full size"
        )


def finished_vectors(pooled: torch.Tensor, dimension: int, normalize: bool) -> np.ndarray:
    """Return pooled states as float32 vectors: cut to ``dimension``, then L2-normalised if ``normalize``."""
    with compute_section():  # no fork splits it (see qwen3_retrieval.kernels.forking)
        vectors = pooled[:, :dimension].float()
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()


class RerankingProcessor:
    """Prompt ids of (query, document) pairs for a Qwen3-Reranker model, and rankings from their scores.

    Args:
        tokenizer: The checkpoint's tokenizer.
        options: The reranker's options (instruction, ``max_length``).
    """

    def __init__(self, tokenizer: TextTokenizer, options: RerankerOptions) -> None:
        self.tokenizer, self.options = tokenizer, options
        self.prefix_ids = tokenizer.template(RERANK_PREFIX)
        self.suffix_ids = tokenizer.template(RERANK_SUFFIX)

    def prompts(self, query: str, documents: Sequence[str], instruction: str | None = None) -> RerankPrompts:
        """Return the ids every prompt starts with, and each document's own ids (document and suffix).

        ``prefix + tails[i]`` is the card's whole prompt for document ``i``. Only the document is cut to fit
        ``max_length``; the instruction, query and template are kept.

        Raises:
            ValueError: The instruction and query alone leave no room for a document.
        """
        limit = self.options.max_length
        task = self.options.instruction if instruction is None else instruction
        # Read no more of a huge query than can fit: if the head alone fills max_length, there is no room anyway.
        head = self.tokenizer.plain([rerank_head(task, query[: self.tokenizer.chars_needed(limit)])], limit=limit)[0]
        fixed = len(self.prefix_ids) + len(head) + len(self.suffix_ids)
        room = limit - fixed
        if room < 1:
            raise QueryTooLongError(fixed, limit, truncated=len(head) == limit)
        cut = self.tokenizer.chars_needed(room)  # before the template's f-string copies a 50 MB document whole
        docs = self.tokenizer.plain([rerank_document(d[:cut]) for d in documents], limit=room)
        return RerankPrompts(self.prefix_ids + head, [doc + self.suffix_ids for doc in docs])

    def prompt_ids(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        """Return each (query, document) pair's whole prompt ids (what the model card's code builds)."""
        return self.prompts(query, documents, instruction).whole()


def ranked(scores: Sequence[float], top_n: int | None, score_threshold: float | None) -> list[tuple[int, float]]:
    """Return ``(index, score)`` pairs, best first (ties keep input order), thresholded, then cut to ``top_n``.

    The values are taken as checked (:meth:`~qwen3_retrieval.Qwen3Reranker.rank` and the framework components'
    fields check them once).
    """
    order = sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)
    if score_threshold is not None:
        order = [(index, score) for index, score in order if score >= score_threshold]
    return order if top_n is None else order[:top_n]


def answer_token_ids(tokenizer: TextTokenizer, model: str) -> tuple[int, int]:
    """Return the ids of ``yes`` and ``no``, each of which must be one token (P(yes) reads their logits)."""
    ids = []
    for token in (YES_TOKEN, NO_TOKEN):
        token_id = tokenizer.token_id(token)
        if token_id is None or tokenizer.plain([token]) != [[token_id]]:
            raise ValueError(
                f"{model!r}: {token!r} is not a single token in its tokenizer; is it a Qwen3-Reranker checkpoint?"
            )
        ids.append(token_id)
    return ids[0], ids[1]
