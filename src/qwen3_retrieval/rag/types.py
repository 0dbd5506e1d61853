"""The records the RAG modules pass to each other: a passage to store, a hit from search, a cited source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("hybrid", "dense")
"""How the store searches before reranking: dense cosine fused with BM25 (the default), or dense alone."""


@dataclass(frozen=True)
class Passage:
    """One indexable piece of a file: its text (heading path first), heading path, and place in the file."""

    text: str
    heading: str
    location: str = ""
    """Where in the file, for the citation: ``"page 3"`` for PDFs, empty otherwise."""
    image: str = ""
    """``--pages``: the image this passage stands for, ``"page 3"`` (a PDF page) or ``"file"`` (an image file);
    empty for a text passage. The pixels are made from the file when needed (:mod:`qwen3_retrieval.rag.pages`)."""


@dataclass(frozen=True)
class Hit:
    """A passage found by search, with the file it came from."""

    text: str
    root: str
    path: str
    heading: str
    location: str
    image: str = ""
    """As :attr:`Passage.image`."""


@dataclass(frozen=True)
class Source:
    """A reranked passage with where it came from."""

    text: str
    path: str
    heading: str
    location: str
    score: float
    image: str = ""
    """As :attr:`Passage.image`: a cited page image, or empty for a text passage."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``qwen3-rag ask --json`` prints (``image`` only for a page image)."""
        shown = {
            "text": self.text,
            "source": self.path,
            "heading": self.heading,
            "location": self.location,
            "score": self.score,
        }
        return {**shown, "image": self.image} if self.image else shown


def question_problem(question: str) -> str | None:
    """What makes ``question`` unanswerable before anything is searched (nothing to search for), or None."""
    if any(c.isprintable() and not c.isspace() for c in question):
        return None
    return "the question is " + ("empty" if not question.strip() else "only spaces and control characters")
