"""The files of an indexing run: a file to index, a file read and split, and how a file becomes passages.

Both the run in this process (:mod:`~qwen3_retrieval.rag.indexing`) and the one on Ray
(:mod:`~qwen3_retrieval.rag.on_ray`) use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.pages import image_file_passage, is_image_file, page_passages
from qwen3_retrieval.rag.passages import PassageSplitter
from qwen3_retrieval.rag.readers import NotText, no_text_warning, read_file
from qwen3_retrieval.rag.store import StoredFile
from qwen3_retrieval.rag.terminal import path_name, printable
from qwen3_retrieval.rag.types import Passage


@dataclass
class FileToIndex:
    """A file to index: where it is, its root and root-relative path, content hash, size and stored record."""

    file: Path
    root: str
    rel: str
    file_hash: str
    size: int
    stored: StoredFile | None
    source: StoredFile | None = None
    """A stored file with the same content hash, whose vectors this one may reuse."""


@dataclass
class FileRead:
    """A file read and split, ready to embed."""

    todo: FileToIndex
    passages: list[Passage]
    vectors: np.ndarray | None = None
    """The passages' vectors if they are known (stored for a renamed or copied file, or embedded on Ray)."""
    reused: bool = False
    """The vectors are those stored for the same content."""
    skipped: bool = False
    """The file could not be read (warned): nothing is stored, and it counts as done for the progress."""


def split_file(file: Path, splitter: PassageSplitter, pages: bool = False) -> tuple[list[Passage] | None, list[str]]:
    """A file's passages (None if it is skipped) and the warnings reading it gave.

    With ``pages`` an image file is one image passage, and a PDF's pages are image passages after its text ones.

    Raises:
        RagError: An extra that reads this format is missing: the user must install it, since skipping every
            PDF would hide that.
    """
    try:
        if pages and is_image_file(file):
            return [image_file_passage(file)], []
        document = read_file(file)
    except RagError:
        raise
    except NotText as err:
        return None, [f"skipped {path_name(file)}: {err}"]
    except Exception as err:  # a broken or unreadable file must not stop the others
        reason = printable(" ".join(str(err).split())[:200])
        return None, [f"skipped {path_name(file)}: {type(err).__name__}: {reason}"]
    passages = splitter.split(document.markdown, paged=document.paged)
    if pages and document.paged:
        images, said = page_passages(file, document.pages)
        return passages + images, [*document.warnings, *said]
    return passages, [*document.warnings, *no_text_warning(file, document)]
