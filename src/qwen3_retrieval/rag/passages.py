"""Reading Markdown and text files and splitting them on headings into size-capped passages."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qwen3_retrieval.rag.errors import RagError

SUFFIXES = (".md", ".markdown", ".txt")
_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")


@dataclass(frozen=True)
class Passage:
    """One indexable piece of a file."""

    text: str
    source: str
    heading: str


def find_files(paths: Iterable[str | Path]) -> list[Path]:
    """Return the Markdown and text files named by ``paths`` (folders are searched recursively), sorted."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise RagError(f"no such file or folder: {raw}")
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.suffix.lower() in SUFFIXES:
            found.add(path.resolve())
        else:
            raise RagError(f"{raw} is not a Markdown or text file ({', '.join(SUFFIXES)})")
    if not found:
        raise RagError(f"no Markdown or text files ({', '.join(SUFFIXES)}) under {', '.join(map(str, paths))}")
    return sorted(found)


def file_fingerprint(data: bytes, chunk_size: int) -> str:
    """Return a hash that changes when the file's bytes or the splitting change."""
    return hashlib.sha256(data + f"|chunk_size={chunk_size}".encode()).hexdigest()[:32]


def split_passages(text: str, source: str, chunk_size: int) -> list[Passage]:
    """Split ``text`` on Markdown headings, then pack paragraphs into passages of at most ``chunk_size`` chars.

    Each passage starts with its section's heading (when there is one), so the heading's words help retrieval.
    """
    if chunk_size < 100:
        raise RagError(f"--chunk-size must be at least 100 characters, got {chunk_size}")
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            sections.append((match.group(2), []))
        else:
            sections[-1][1].append(line)
    passages: list[Passage] = []
    for heading, lines in sections:
        body = "\n".join(lines).strip()
        if not body and not heading:
            continue
        title = f"{heading}\n\n" if heading else ""
        for piece in _pack(body, chunk_size - len(title)):
            passages.append(Passage(text=f"{title}{piece}".strip(), source=source, heading=heading))
    return passages


def _pack(body: str, limit: int) -> list[str]:
    limit = max(limit, 50)
    pieces: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()):
        while len(paragraph) > limit:  # a paragraph longer than a passage is cut at a space
            cut = paragraph.rfind(" ", 0, limit)
            cut = cut if cut > limit // 2 else limit
            if current:
                pieces.append(current)
                current = ""
            pieces.append(paragraph[:cut].strip())
            paragraph = paragraph[cut:].strip()
        if current and len(current) + 2 + len(paragraph) > limit:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current or not pieces:
        pieces.append(current)
    return pieces
