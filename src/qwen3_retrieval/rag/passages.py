"""Splitting Markdown into passages sized in the embedding model's tokens, each with its heading context.

The splitting is LangChain's (``langchain-text-splitters``, in the ``[rag]`` extra): ``MarkdownHeaderTextSplitter``
cuts at headings (code fences respected) and ``RecursiveCharacterTextSplitter`` packs paragraphs, lines, then
words into passages of at most ``chunk_tokens`` tokens counted with the embedding model's own tokenizer, so a
passage is never cut again at the model's ``max_length``. Each passage starts with its heading path
("Install > On Linux"), counted in its size, so the heading's words help both dense and BM25 retrieval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.extras import require
from qwen3_retrieval.rag.types import Passage

_LEVELS = [("#" * n, f"h{n}") for n in range(1, 7)]
MIN_CHUNK_TOKENS = 32


@dataclass(frozen=True)
class Splitting:
    """How files are cut into passages; recorded in the collection, which must be built with one splitting."""

    chunk_tokens: int = 512
    overlap_tokens: int = 64

    def check(self, max_length: int) -> Splitting:
        """Return self if it fits a model reading ``max_length`` tokens; raise :class:`RagError` otherwise."""
        if not MIN_CHUNK_TOKENS <= self.chunk_tokens < max_length:
            raise RagError(
                f"--chunk-tokens must be from {MIN_CHUNK_TOKENS} to {max_length - 1} (the embedding model reads "
                f"{max_length} tokens with its end token), got {self.chunk_tokens}"
            )
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise RagError(
                f"--overlap-tokens must be from 0 to less than half of --chunk-tokens, got {self.overlap_tokens}"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        """The settings as recorded in the collection."""
        return asdict(self)


class PassageSplitter:
    """Splits Markdown with one tokenizer and one :class:`Splitting`."""

    def __init__(self, tokenizer: Any, splitting: Splitting) -> None:
        splitters = require("langchain_text_splitters", "rag", "splitting documents into passages")
        self.tokenizer, self.splitting = tokenizer, splitting
        self._headings = splitters.MarkdownHeaderTextSplitter(_LEVELS, strip_headers=True)
        self._factory = splitters.RecursiveCharacterTextSplitter.from_huggingface_tokenizer

    def tokens(self, text: str) -> int:
        """How many tokens of the embedding model ``text`` is."""
        return len(self.tokenizer.tokenize(text))

    def _pieces(self, body: str, room: int) -> list[str]:
        overlap = min(self.splitting.overlap_tokens, room // 2)
        return list(self._factory(self.tokenizer, chunk_size=room, chunk_overlap=overlap).split_text(body))

    def split(self, markdown: str, *, paged: bool = False) -> list[Passage]:
        """Return the passages of ``markdown``, in order.

        Args:
            markdown: The document.
            paged: Its top headings are the ``Page N`` sections a reader wrote (PDF), cited as locations; in
                any other document a heading "Page 2" is only a heading.
        """
        passages: list[Passage] = []
        for section in self._headings.split_text(markdown):
            body = section.page_content.strip()
            if not body:
                continue
            titles = [section.metadata[key] for _, key in _LEVELS if key in section.metadata]
            heading = " > ".join(titles)[:300]  # a runaway "heading" must not crowd out its passage
            location = titles[0].lower() if paged and titles and titles[0].startswith("Page ") else ""
            title = f"{heading}\n\n" if heading else ""
            # The heading path is part of every passage, so it counts against the passage's size; tokens can merge
            # across the join, so a passage that still comes out too long is split again with less room.
            room = self.splitting.chunk_tokens - self.tokens(title)
            while True:
                pieces = self._pieces(body, max(room, MIN_CHUNK_TOKENS // 2))
                excess = max(self.tokens(f"{title}{piece}") for piece in pieces) - self.splitting.chunk_tokens
                if excess <= 0 or room <= MIN_CHUNK_TOKENS // 2:
                    break
                room -= excess
            passages += [Passage(f"{title}{piece}", heading, location) for piece in pieces]
        return passages
