"""``--pages``: PDF pages and image files as images for the Qwen3-VL models, beside the text passages.

A page passage records which page it is (``image="page 3"``) or that the file is an image (``image="file"``);
the image itself is made again from the file whenever a model needs it: when the page is embedded, when it is
reranked and when it is sent to the chat model. So the index holds no pixels, and memory follows the batch.

PDF pages are rendered by `pypdfium2 <https://github.com/pypdfium2-team/pypdfium2>`_ (``[pages]``): PDFium, the
renderer of Chromium, shipped in the wheel, with no system libraries. A page is rendered at the scale that gives
about the largest image the models read (:data:`RENDER_PIXELS`), so nothing is lost to the render and no time is
spent on pixels the model would resize away. The same page always renders to the same pixels, so re-indexing
gives the same vectors.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.extras import require
from qwen3_retrieval.rag.readers import IMAGE_SUFFIXES
from qwen3_retrieval.rag.terminal import path_name
from qwen3_retrieval.rag.types import Passage
from qwen3_retrieval.vl.media import MAX_PIXELS

RENDER_PIXELS = MAX_PIXELS
"""A page is rendered to about this many pixels: the Qwen3-VL models' largest image (1800 tokens)."""
MAX_SCALE = 4.0
"""The most a page is enlarged (a page the size of a stamp is not rendered to a poster)."""
FILE = "file"
"""The ``image`` of a passage whose file is itself an image."""


def page_passages(file: Path, texts: list[str]) -> tuple[list[Passage], list[str]]:
    """One passage per page of a PDF (the page as an image), and the warnings.

    A page passage keeps the page's text (if any), for BM25 and for chat models that take no images.
    The pages are counted by the renderer: a PDF that PDFium cannot open keeps its text passages and loses its
    page images, with a warning.

    Raises:
        RagError: ``[pages]`` is not installed.
    """
    pdfium = require("pypdfium2", "pages", f"rendering {file.name}")
    try:
        document = pdfium.PdfDocument(str(file))
        count = len(document)
        document.close()
    except (pdfium.PdfiumError, OSError) as err:
        return [], [
            f"{path_name(file.name)}: its pages cannot be rendered ({type(err).__name__}); only its text is indexed"
        ]
    texts = texts + [""] * (count - len(texts))
    return [Passage(texts[n - 1], "", f"page {n}", image=f"page {n}") for n in range(1, count + 1)], []


def image_file_passage(file: Path) -> Passage:
    """The passage of an image file: the image, with no text.

    Raises:
        ValueError: The file is not an image PIL can read (the message names it).
    """
    from qwen3_retrieval.vl.media import read_image

    read_image(file, str(file))  # checked here, so a broken image is skipped with a warning, not stored
    return Passage("", "", "", image=FILE)


def page_image(file: Path, image: str) -> bytes | Path:
    """The image a page passage stands for: the file itself, or its page rendered as PNG bytes.

    Raises:
        RagError: ``[pages]`` is not installed.
        ValueError: The page cannot be rendered (the message names the file and the page).
    """
    if image == FILE:
        if not file.is_file():
            raise ValueError(f"{file} is gone")
        return file
    number = int(image.removeprefix("page "))
    pdfium = require("pypdfium2", "pages", f"rendering {file.name}")
    try:
        document = pdfium.PdfDocument(str(file))
        try:
            page = document[number - 1]
            width, height = page.get_size()  # points, 1/72 inch
            scale = min(MAX_SCALE, math.sqrt(RENDER_PIXELS / max(width * height, 1.0)))
            bitmap = page.render(scale=scale)
            buffer = io.BytesIO()
            bitmap.to_pil().convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue()
        finally:
            document.close()
    except (pdfium.PdfiumError, IndexError, OSError) as err:
        raise ValueError(f"cannot render page {number} of {file}: {type(err).__name__}: {err}") from None


def is_image_file(file: Path) -> bool:
    """Whether ``file`` is an image by its name (``--pages`` indexes those)."""
    return file.suffix.lower() in IMAGE_SUFFIXES


def model_input(file: Path, passage_text: str, image: str) -> object:
    """What the VL models read for a stored passage: its image if it has one, else its text."""
    return {"image": page_image(file, image)} if image else passage_text


def require_pages() -> None:
    """Raise :class:`RagError` with the install line if ``[pages]`` is missing (before any work starts)."""
    require("pypdfium2", "pages", "--pages")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise RagError("--pages needs Pillow: pip install 'qwen3-retrieval[pages]'") from None


def data_url(file: Path, image: str) -> str:
    """The image a page passage stands for as a ``data:`` URL, as OpenAI-compatible chat models take images."""
    import base64

    made = page_image(file, image)
    data = made.read_bytes() if isinstance(made, Path) else made
    kind = (
        {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(file.suffix.lower(), "png") if image == FILE else "png"
    )
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"
