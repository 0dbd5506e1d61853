"""Qwen3-Reranker: one readable path per call, processor -> engine -> processor.

The processor (:mod:`qwen3_retrieval.processors`) builds the model card's prompt ids and ranks the scores;
the engine (:mod:`qwen3_retrieval.engines`) computes P(yes) from the ids. This module wires them to the options.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from qwen3_retrieval._model import SharedModel, off_the_loop
from qwen3_retrieval._validation import (
    check_call_instruction,
    check_query,
    check_score_threshold,
    check_texts,
    check_top_n,
)
from qwen3_retrieval.engines import ScoringEngine
from qwen3_retrieval.loading import LoadedReranker, load_reranker
from qwen3_retrieval.options import RerankerOptions, options_of
from qwen3_retrieval.processors import RerankingProcessor, ranked
from qwen3_retrieval.prompts import DEFAULT_RERANKER_MODEL

__all__ = ["Qwen3Reranker"]

_Parts = tuple[RerankingProcessor, ScoringEngine]


class Qwen3Reranker(SharedModel[RerankerOptions, LoadedReranker, _Parts]):
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
        **options: The options of :class:`~qwen3_retrieval.options.RerankerOptions` (``device=``,
            ``instruction=``, ``base_url=``…), each documented there, once.

    Raises:
        ValueError: An option's value is not valid (the message names it and what is accepted).
        TypeError: An option is unknown, or a value has the wrong type.
    """

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_RERANKER_MODEL, **options: Any) -> None:
        super().__init__(options_of(model, options, RerankerOptions))

    @property
    def processor(self) -> RerankingProcessor:
        """What builds the prompt ids and ranks the scores (loads the model if needed)."""
        return self.ready()[0]

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
        docs, task = _checked(query, documents, instruction)
        if not docs:
            return []
        processor, engine = self.ready()
        prompts = processor.prompts(query, docs, task)
        return engine.score(prompts, self.options.policy, self._progress(len(prompts.tails), "Reranking"))

    async def ascore(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """Async :meth:`score`: a server engine's requests run on the event loop, no thread per call."""
        docs, task = _checked(query, documents, instruction)
        if not docs:
            return []
        processor, engine = await self.aready()
        prompts = await off_the_loop(lambda: processor.prompts(query, docs, task), sum(map(len, docs)))
        return await engine.ascore(prompts, self.options.policy)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[int, float]]:
        """Return ``(index, score)`` pairs, best first: at most ``top_n``, none scoring below ``score_threshold``.

        Ties keep input order.

        Args:
            query: The search text; must not be empty.
            documents: The candidates.
            top_n: Keep at most this many; None keeps all.
            instruction: Task instruction for this call; None uses the reranker's, ``""`` an empty one.
            score_threshold: Drop documents whose score is below this probability (0 to 1); None keeps all.

        Raises:
            ValueError: If ``top_n`` is less than 1 or ``score_threshold`` is not a number in [0, 1].
        """
        top_n, score_threshold = check_top_n(top_n), check_score_threshold(score_threshold)  # before any scoring
        return ranked(self.score(query, documents, instruction=instruction), top_n, score_threshold)

    async def arank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[int, float]]:
        """Async :meth:`rank`."""
        top_n, score_threshold = check_top_n(top_n), check_score_threshold(score_threshold)
        return ranked(await self.ascore(query, documents, instruction=instruction), top_n, score_threshold)

    def _load(self, options: RerankerOptions) -> LoadedReranker:
        return load_reranker(options)

    def _build(self, loaded: LoadedReranker) -> _Parts:
        return RerankingProcessor(loaded.tokenizer, self.options), loaded.engine


def _checked(query: str, documents: Sequence[str], instruction: str | None) -> tuple[list[str], str | None]:
    """Check a call's input before anything loads: bad input fails fast, and an empty list loads nothing."""
    docs = check_texts(documents, "documents")
    check_query(query)
    return docs, check_call_instruction(instruction)
