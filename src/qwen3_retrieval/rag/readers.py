"""Finding the files under a folder and reading each format into Markdown, headings kept.

Every reader returns Markdown, so one splitter serves all formats and a heading is a heading wherever it came
from. The libraries (each behind an extra, all of them in ``[all]``):

* PDF: `pypdf <https://pypdf.readthedocs.io>`_ (``[pdf]``): pure Python, no system libraries, actively kept; it
  reads a page's text layer. PDF keeps no headings, so each page becomes a ``Page N`` section (cited by page).
  A page with no text layer (a scan) is a warning, not a failure; ``--pages`` indexes every page as an image
  too (:mod:`qwen3_retrieval.rag.pages`).
* HTML: `markdownify <https://github.com/matthewwithanm/python-markdownify>`_ over Beautiful Soup (``[html]``):
  ``<h1>``-``<h6>`` become Markdown headings; scripts, styles and navigation are dropped.
* DOCX: `python-docx <https://python-docx.readthedocs.io>`_ (``[docx]``): paragraphs styled ``Heading N`` or
  ``Title`` become headings; tables become one line per row.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qwen3_retrieval.rag.extras import require
from qwen3_retrieval.rag.terminal import is_valid_name, path_name

# Folders a documentation folder or a project root holds that are never documents.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "site-packages"})


@dataclass
class Document:
    """A file read into Markdown, with what the reader noticed (e.g. pages without text)."""

    markdown: str
    warnings: list[str] = field(default_factory=list)
    paged: bool = False
    """Whether the reader made each page a ``# Page N`` section (PDF): only then is such a heading a location."""
    pages: list[str] = field(default_factory=list)
    """Each page's text, in order (PDF; empty for a page without a text layer)."""


class NotText(Exception):
    """A file with a text format's name whose bytes are not text (skipped with a warning)."""


# Text has no NUL bytes, and few control characters or undecodable bytes; a binary file has many of both.
BINARY_SHARE = 0.1
SNIFF_BYTES = 8192


def _text(path: Path) -> str:
    """The file decoded as UTF-8 (undecodable bytes replaced); :class:`NotText` if it looks binary."""
    data = path.read_bytes()
    head = data[:SNIFF_BYTES]
    sample = head.decode("utf-8", errors="replace")
    odd = sum(1 for c in sample if c == "\ufffd" or (c < " " and c not in "\t\n\r\f"))
    if b"\0" in head or odd > BINARY_SHARE * max(len(sample), 1):
        raise NotText("its bytes are not text (a binary file with a text file's name?)")
    return data.decode("utf-8", errors="replace")


def read_markdown(path: Path) -> Document:
    """Markdown and plain text, as they are (undecodable bytes replaced)."""
    return Document(_text(path))


def read_pdf(path: Path) -> Document:
    """Each page with text as a ``Page N`` section; pages without text are a warning (see :func:`no_text_warning`)."""
    pypdf = require("pypdf", "pdf", f"reading {path.name}")
    reader = pypdf.PdfReader(str(path))
    texts = [(page.extract_text() or "").strip() for page in reader.pages]
    sections = [f"# Page {number}\n\n{text}" for number, text in enumerate(texts, start=1) if text]
    return Document("\n\n".join(sections), paged=True, pages=texts)


def no_text_warning(path: Path, document: Document) -> list[str]:
    """The warning for a PDF's pages without a text layer, which text indexing cannot see (``--pages`` can)."""
    empty = [str(number) for number, text in enumerate(document.pages, start=1) if not text]
    if not empty:
        return []
    return [
        f"{path_name(path.name)}: no text on page(s) {', '.join(empty)} (scanned images?); they are not indexed "
        "(--pages indexes them as images)"
    ]


def read_html(path: Path) -> Document:
    """HTML converted to Markdown, headings kept; scripts, styles and page chrome dropped."""
    markdownify = require("markdownify", "html", f"reading {path.name}")
    bs4 = require("bs4", "html", f"reading {path.name}")
    soup = bs4.BeautifulSoup(_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "nav", "header", "footer", "aside"]):
        tag.decompose()  # not the page's content: menus, banners, code
    return Document(markdownify.MarkdownConverter(heading_style="ATX", escape_asterisks=False).convert_soup(soup))


def read_docx(path: Path) -> Document:
    """Paragraphs (heading styles as headings), then tables one row a line."""
    docx = require("docx", "docx", f"reading {path.name}")
    document = docx.Document(str(path))
    blocks = []
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = paragraph.style.name if paragraph.style is not None else ""
        level = 1 if style == "Title" else _heading_level(style)
        blocks.append(f"{'#' * level} {text}" if level else text)
    for table in document.tables:
        blocks += [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
    return Document("\n\n".join(blocks))


def _heading_level(style: str) -> int:
    name, _, number = style.partition(" ")
    return min(int(number), 6) if name == "Heading" and number.isdigit() else 0


READERS: dict[str, Callable[[Path], Document]] = {
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".txt": read_markdown,
    ".pdf": read_pdf,
    ".html": read_html,
    ".htm": read_html,
    ".docx": read_docx,
}


def read_file(path: Path) -> Document:
    """Read ``path`` with its format's reader; a missing extra raises :class:`RagError`, a broken file others."""
    return READERS[path.suffix.lower()](path)


def find_files(
    folder: Path,
    *,
    include_hidden: bool = False,
    follow_links: bool = False,
    warn: Callable[[str], None] = lambda message: None,
    suffixes: Collection[str] = READERS.keys(),
) -> list[Path]:
    """Return the readable files under ``folder``, sorted, skipping hidden folders and virtualenvs by default.

    Hidden means a name starting with ``.`` (``.git``, ``.venv``); ``node_modules``, ``__pycache__`` and any
    folder holding a ``pyvenv.cfg`` (a virtualenv under any name) are skipped too. ``include_hidden`` keeps them.

    Symbolic links are followed while they stay inside ``folder``; one leading out of it is skipped with a warning
    unless ``follow_links``. Each real folder and file is taken once, under its own path when it has one (a link
    to it only adds it if nothing else did), so links that point back up or at each other cannot loop or repeat.
    An entry that cannot be read (permissions, a broken link) or whose name is not valid UTF-8 is skipped with a
    warning naming it, escaped; the rest of the folder is still read. ``suffixes`` are the formats taken (those
    with a reader; ``--pages`` adds images).
    """
    root = folder.resolve()
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of every folder walked and file taken
    links: list[Path] = []  # followed after every real entry, so that real paths win

    def skip(path: Path, why: str) -> None:
        warn(f"skipped {path_name(path)}: {why}")

    def take(path: Path, *, via_link: bool) -> None:
        try:
            info = path.stat()
            if (info.st_dev, info.st_ino) in seen:
                return  # already taken: a cycle, or a second way to the same place
            if stat.S_ISDIR(info.st_mode):
                if not include_hidden and path != root and _skipped_folder(path):
                    return
                seen.add((info.st_dev, info.st_ino))
                walk(path)
            elif stat.S_ISREG(info.st_mode) and path.suffix.lower() in suffixes:
                seen.add((info.st_dev, info.st_ino))
                found.append(path)
        except OSError as err:
            skip(path, f"{'a broken link' if via_link else 'it cannot be read'} ({err.strerror or err})")

    def walk(current: Path) -> None:
        try:
            entries = sorted(current.iterdir())
        except OSError as err:
            skip(current, f"the folder cannot be read ({err.strerror or err})")
            return
        for entry in entries:
            if not is_valid_name(entry):
                skip(entry, "its name is not valid UTF-8; rename it to index it")
            elif include_hidden or not entry.name.startswith("."):
                if entry.is_symlink():
                    links.append(entry)
                else:
                    take(entry, via_link=False)

    take(root, via_link=False)
    while links:
        link = links.pop(0)
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError) as err:  # RuntimeError: a loop of links, on Python 3.10-3.12
            skip(link, f"a broken link ({getattr(err, 'strerror', None) or err})")
            continue
        if not follow_links and not target.is_relative_to(root):
            skip(link, f"a link out of {path_name(root)}, to {path_name(target)} (--follow-links follows it)")
            continue
        take(link, via_link=True)
    return sorted(found)


def _skipped_folder(path: Path) -> bool:
    return path.name in SKIPPED_FOLDERS or (path / "pyvenv.cfg").exists()


def supported(paths: Iterable[Path], suffixes: Collection[str] = READERS.keys()) -> list[Path]:
    """Return the paths whose format has a reader (or is one of ``suffixes``)."""
    return [p for p in paths if p.suffix.lower() in suffixes]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Image files, which ``--pages`` indexes as images."""
PAGE_SUFFIXES = (*READERS, *IMAGE_SUFFIXES)
"""What ``--pages`` takes: every format with a reader, and images."""
FORMATS = ", ".join(sorted(READERS))
"""The formats read, as messages list them."""
PAGE_FORMATS = ", ".join(sorted(PAGE_SUFFIXES))
"""What ``--pages`` takes, as messages list them."""
