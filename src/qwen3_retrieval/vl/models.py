"""Qwen3-VL-Embedding and Qwen3-VL-Reranker: texts and images, exactly as the official code computes them.

One path per call, as for the text models: inputs -> processor (prompt ids, image patches) -> engine (last-token
states) -> processor (vectors) or sigmoid (scores). The official code embeds a whole list in one forward pass
and scores one pair per forward pass; here both run in token-budget batches, images' tokens counted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from qwen3_retrieval._model import OptionView, SharedModel
from qwen3_retrieval._validation import check_call_instruction, check_score_threshold, check_top_n
from qwen3_retrieval.options import VLEmbedderOptions, VLRerankerOptions, options_of
from qwen3_retrieval.processors import ranked
from qwen3_retrieval.vl.loading import LoadedVL, VLEngine, load_vl
from qwen3_retrieval.vl.processors import VLEmbeddingProcessor, VLPrompts, VLRerankingProcessor
from qwen3_retrieval.vl.prompts import (
    DEFAULT_VL_EMBEDDING_MODEL,
    DEFAULT_VL_RERANKER_MODEL,
    VLInput,
    input_list,
    vl_input,
    vl_inputs,
)

__all__ = ["Qwen3VLEmbedder", "Qwen3VLReranker"]


def _prompts(loaded: LoadedVL, options: VLEmbedderOptions | VLRerankerOptions) -> VLPrompts:
    # The loaded model is shared by objects whose pixel bounds may differ: each applies its own.
    settings = replace(loaded.settings, min_pixels=options.min_pixels, max_pixels=options.max_pixels)
    return VLPrompts(loaded.tokenizer, settings, options.allow_urls, options.model)


class Qwen3VLEmbedder(SharedModel[VLEmbedderOptions, LoadedVL, tuple[VLEmbeddingProcessor, VLEngine]]):
    """Embeds texts, images and both together with a Qwen3-VL-Embedding model, as the official code does.

    An input is a text (``str``), an image (``PIL.Image`` or ``bytes``), or a dict with ``"text"``,
    ``"image"`` (each one item or a list), ``"video"`` (a video as the list of its frames, or a list of such
    lists) and optionally its own ``"instruction"``. A path is an image only inside a dict
    (``{"image": "page.png"}``); a bare string is text. Each input becomes the official chat prompt: the
    instruction as the system turn (a final "." added unless it ends in punctuation), then the input's videos,
    images and texts, then ``<|im_start|>assistant\\n``, whose last state is the embedding, cut to
    ``dimensions`` (Matryoshka) and L2-normalised.

    Images are resized as the official code resizes them (sides multiples of 32, area within ``min_pixels`` and
    ``max_pixels``); videos are sampled (at most 64 frames), resized and timed as it does them
    (:mod:`qwen3_retrieval.vl.video`). Texts are plain text: one that spells ``<|image_pad|>`` never becomes a
    vision token. Over-long inputs lose the end of their text; the template, every image and every video are
    kept.

    Args:
        model: Hub id or local folder of a Qwen3-VL-Embedding checkpoint.
        **options: The options of :class:`~qwen3_retrieval.options.VLEmbedderOptions`, each documented there.

    Raises:
        ValueError: An option's value is not valid.
        TypeError: An option is unknown, or a value has the wrong type.
    """

    dimensions = OptionView[int | None]("dimensions")

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_VL_EMBEDDING_MODEL, **options: Any) -> None:
        super().__init__(options_of(model, options, VLEmbedderOptions))

    @property
    def dimension(self) -> int:
        """The size of the vectors this embedder returns (loads the model if needed)."""
        return self.ready()[0].dimension

    def embed(self, inputs: Sequence[Any], instruction: str | None = None) -> np.ndarray:
        """Embed inputs (texts, images, or dicts of both) with one instruction.

        Args:
            inputs: The inputs (see the class docstring).
            instruction: The system instruction for inputs that name none; None gives the official default,
                ``"Represent the user's input."`` (what documents get).

        Returns:
            A float32 array of shape ``(len(inputs), dimension)``; ``(0, 0)`` for an empty list, loading nothing.

        Raises:
            ValueError: An image cannot be read (the message names the input and the fix), or an input's images
                alone exceed ``max_length``.
            TypeError: An input has a type or key that is not accepted.
        """
        items, task = vl_inputs(inputs), check_call_instruction(instruction)
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        processor, engine = self.ready()
        sequences = processor.sequences(items, task)
        pooled = engine.embed(sequences, self.options.policy, self._progress(len(sequences), "Embedding"))
        return processor.vectors(pooled)

    def embed_documents(self, inputs: Sequence[Any]) -> np.ndarray:
        """Embed documents: :meth:`embed` with the official default instruction."""
        return self.embed(inputs)

    def embed_queries(self, inputs: Sequence[Any], instruction: str | None = None) -> np.ndarray:
        """Embed queries: :meth:`embed` with ``instruction``, or this embedder's (``instruction=`` option)."""
        return self.embed(inputs, self.options.instruction if instruction is None else instruction)

    def embed_query(self, query: Any, instruction: str | None = None) -> np.ndarray:
        """Embed one query; see :meth:`embed_queries`. Returns a 1-D float32 array."""
        return self.embed_queries([query], instruction)[0]

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed images as documents: each a ``PIL.Image``, bytes, or a path (a string here is a path)."""
        return self.embed([{"image": image} for image in input_list(images, "images")])

    async def aembed(self, inputs: Sequence[Any], instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed`: the inputs are read in a worker thread (images block), the engine's async awaited."""
        items, task = vl_inputs(inputs), check_call_instruction(instruction)
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        processor, engine = await self.aready()
        sequences = await asyncio.to_thread(processor.sequences, items, task)
        return processor.vectors(await engine.aembed(sequences, self.options.policy))

    async def aembed_documents(self, inputs: Sequence[Any]) -> np.ndarray:
        """Async :meth:`embed_documents`."""
        return await self.aembed(inputs)

    async def aembed_queries(self, inputs: Sequence[Any], instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed_queries`."""
        return await self.aembed(inputs, self.options.instruction if instruction is None else instruction)

    async def aembed_query(self, query: Any, instruction: str | None = None) -> np.ndarray:
        """Async :meth:`embed_query`."""
        return (await self.aembed_queries([query], instruction))[0]

    async def aembed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Async :meth:`embed_images`."""
        return await self.aembed([{"image": image} for image in input_list(images, "images")])

    def _load(self, options: VLEmbedderOptions) -> LoadedVL:
        return load_vl(options, reranker=False)

    def _build(self, loaded: LoadedVL) -> tuple[VLEmbeddingProcessor, VLEngine]:
        return VLEmbeddingProcessor(_prompts(loaded, self.options), self.options, loaded.hidden_size), loaded.engine


class Qwen3VLReranker(SharedModel[VLRerankerOptions, LoadedVL, tuple[VLRerankingProcessor, VLEngine]]):
    """Scores (query, document) pairs of texts and images with a Qwen3-VL-Reranker, as the official code does.

    The query and each document are inputs as :class:`Qwen3VLEmbedder` takes them. Each pair becomes the official
    prompt (judge system prompt, then ``<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}``) and
    scores ``sigmoid((W[yes] - W[no]) . h)`` at its last token. Pairs run in token-budget batches instead of
    the official one pair per forward pass. Over-long pairs are cut by the official rule: images and special
    tokens are kept, the end of the text goes.

    Args:
        model: Hub id or local folder of a Qwen3-VL-Reranker checkpoint.
        **options: The options of :class:`~qwen3_retrieval.options.VLRerankerOptions`, each documented there.
    """

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_VL_RERANKER_MODEL, **options: Any) -> None:
        super().__init__(options_of(model, options, VLRerankerOptions))

    def score(self, query: Any, documents: Sequence[Any], instruction: str | None = None) -> list[float]:
        """Return each document's relevance to ``query``, in [0, 1], in input order.

        Args:
            query: A text, an image, or a dict of texts, images and videos; must not be empty.
            documents: The candidates (texts, images, or dicts).
            instruction: This call's instruction; None uses the reranker's.

        Raises:
            ValueError: The query is empty, or an image cannot be read.
            TypeError: An input has a type or key that is not accepted.
        """
        asked, docs, task = _pairs(query, documents, instruction)
        if not docs:
            return []
        processor, engine = self.ready()
        sequences = processor.sequences(asked, docs, task)
        return engine.score(sequences, self.options.policy, self._progress(len(sequences), "Reranking"))

    def rank(
        self,
        query: Any,
        documents: Sequence[Any],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[int, float]]:
        """Return ``(index, score)`` pairs, best first: at most ``top_n``, none below ``score_threshold``."""
        top_n, score_threshold = check_top_n(top_n), check_score_threshold(score_threshold)
        return ranked(self.score(query, documents, instruction), top_n, score_threshold)

    async def ascore(self, query: Any, documents: Sequence[Any], instruction: str | None = None) -> list[float]:
        """Async :meth:`score`: the inputs are read in a worker thread (images block), the engine's async awaited."""
        asked, docs, task = _pairs(query, documents, instruction)
        if not docs:
            return []
        processor, engine = await self.aready()
        sequences = await asyncio.to_thread(processor.sequences, asked, docs, task)
        return await engine.ascore(sequences, self.options.policy)

    async def arank(
        self,
        query: Any,
        documents: Sequence[Any],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[int, float]]:
        """Async :meth:`rank`."""
        top_n, score_threshold = check_top_n(top_n), check_score_threshold(score_threshold)
        return ranked(await self.ascore(query, documents, instruction), top_n, score_threshold)

    def _load(self, options: VLRerankerOptions) -> LoadedVL:
        return load_vl(options, reranker=True)

    def _build(self, loaded: LoadedVL) -> tuple[VLRerankingProcessor, VLEngine]:
        return VLRerankingProcessor(_prompts(loaded, self.options), self.options), loaded.engine


def _pairs(query: Any, documents: Sequence[Any], instruction: str | None) -> tuple[VLInput, list[VLInput], str | None]:
    """A reranker call's query, documents and instruction, checked."""
    asked = vl_input(query, "query")
    if not asked.images and not asked.videos and not "".join(asked.texts).strip():
        raise ValueError("query is empty; pass the search text, image or video to rank the documents against")
    return asked, vl_inputs(documents, "documents"), check_call_instruction(instruction)
