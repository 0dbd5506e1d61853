"""What the Qwen3-VL retrieval models are given: inputs, instructions and prompt layouts, as in the official code.

The official ``qwen3_vl_embedding.py`` and ``qwen3_vl_reranker.py`` (QwenLM/Qwen3-VL-Embedding) build chat
messages and render them with the Qwen3-VL chat template. That template writes each turn as
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, an image as ``<|vision_start|><|image_pad|><|vision_end|>`` and
consecutive texts with no separator, and ends with ``<|im_start|>assistant\\n``. Here the same prompt is laid
out directly as :data:`Part` s: text (always read as plain characters), a control token, or an image. Tests
compare the ids built from these parts with the official messages rendered by transformers.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwen3_retrieval._validation import check_unicode

DEFAULT_VL_EMBEDDING_MODEL = "Qwen/Qwen3-VL-Embedding-2B"
DEFAULT_VL_RERANKER_MODEL = "Qwen/Qwen3-VL-Reranker-2B"

EMBEDDING_DEFAULT_INSTRUCTION = "Represent the user's input."
"""The official embedder's instruction for inputs that name none (documents); never rewritten."""
VL_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
"""The instruction the official README gives queries; :class:`~qwen3_retrieval.Qwen3VLEmbedder`'s default."""
VL_RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
"""The official reranker's default instruction."""
VL_RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
EMPTY_CONTENT = "NULL"
"""What the official code sends for an input with no text, image or video."""

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


@dataclass(frozen=True)
class Control:
    """A control token of the template (never produced from user text)."""

    token: str


@dataclass(frozen=True)
class ImageSlot:
    """Where the input's image number ``index`` goes: ``<|vision_start|>``, its pads, ``<|vision_end|>``."""

    index: int


@dataclass(frozen=True)
class VideoSlot:
    """Where the input's video number ``index`` goes.

    Each pair of its frames is a timestamp, then ``<|vision_start|>``, the pair's pads and ``<|vision_end|>``
    (see :mod:`qwen3_retrieval.vl.video`).
    """

    index: int


Part = str | Control | ImageSlot | VideoSlot


@dataclass(frozen=True)
class VLInput:
    """One input as the official code takes it: videos, images and texts (shown in that order), an instruction.

    Build it with :func:`vl_input`; images and frames stay as given until the model needs them.
    """

    texts: tuple[str, ...]
    images: tuple[Any, ...]
    instruction: str | None = None
    videos: tuple[Any, ...] = ()
    """Each video: a tuple of its frames, or a video file (a path or bytes)."""


def vl_input(item: object, what: str) -> VLInput:
    """Return ``item`` as a :class:`VLInput`, raising ``TypeError``/``ValueError`` that name ``what``.

    Accepted: a ``str`` (a text), a ``PIL.Image`` or ``bytes`` (an image), or a mapping with any of ``"text"``
    (a string or a list of strings), ``"image"`` (an image or a list: PIL image, bytes, path or, with
    ``allow_urls``, URL), ``"video"`` (a video file, as a path or bytes, or the list of its frames, each as an
    image is given; or a list of videos) and ``"instruction"``. As in the official code, videos come first in
    the prompt, then images, then texts, whatever the mapping's key order.
    """
    if isinstance(item, str):
        return VLInput((check_unicode(item, what),), ())
    if isinstance(item, (bytes, bytearray)) or _is_pil(item):
        return VLInput((), (item,))
    if not isinstance(item, Mapping):
        raise TypeError(
            f"{what} is a {type(item).__name__}; pass a text, a PIL image, image bytes, or a dict with 'text' "
            "and/or 'image' (a path as a string is read as text: use {'image': path})"
        )
    unknown = sorted(set(item) - {"text", "image", "video", "instruction"})
    if unknown:
        raise TypeError(
            f"{what} has unknown key {unknown[0]!r}; the keys are 'text', 'image', 'video' and 'instruction'"
        )
    texts = _as_list(item.get("text"), what + ".text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}.text[{i}] is a {type(text).__name__}, expected str")
        check_unicode(text, f"{what}.text[{i}]")
    images = _as_list(item.get("image"), what + ".image")
    for i, image in enumerate(images):
        if not isinstance(image, (str, bytes, bytearray, os.PathLike)) and not _is_pil(image):
            raise TypeError(f"{what}.image[{i}] is a {type(image).__name__}; pass a PIL image, image bytes or a path")
    videos = _videos(item.get("video"), what + ".video")
    instruction = item.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str):
            raise TypeError(f"{what}.instruction must be a str, got {type(instruction).__name__}")
        check_unicode(instruction, f"{what}.instruction")
    return VLInput(tuple(texts), tuple(images), instruction, videos)


def vl_inputs(items: Sequence[object], what: str = "inputs") -> list[VLInput]:
    """Return each of ``items`` as a :class:`VLInput` (see :func:`vl_input`)."""
    return [vl_input(item, f"{what}[{i}]") for i, item in enumerate(input_list(items, what))]


def input_list(items: object, what: str) -> list[Any]:
    """Return ``items`` as a list, raising ``TypeError`` for a single input passed where a list belongs."""
    if isinstance(items, (str, bytes, Mapping, os.PathLike)) or _is_pil(items):
        raise TypeError(f"{what} must be a list, not a single {type(items).__name__}; wrap it: [item]")
    try:
        return list(items)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{what} must be a list, got {type(items).__name__}") from None


def embedding_instruction(instruction: str | None) -> str:
    """Return the system text of an embedding prompt: the official "." rule, or the default.

    The instruction is stripped and, unless its last character is punctuation (any Unicode ``P*`` category:
    ``?``, ``。``, ``)``…), gets a final ``"."``. None, ``""`` and blank ones give
    :data:`EMBEDDING_DEFAULT_INSTRUCTION`, which is never rewritten.
    """
    task = (instruction or "").strip()
    if not task:
        return EMBEDDING_DEFAULT_INSTRUCTION
    return task if unicodedata.category(task[-1]).startswith("P") else task + "."


def embedding_parts(item: VLInput, instruction: str | None) -> list[Part]:
    """Return the official embedding prompt of ``item``: system instruction, then images and texts.

    ``instruction`` is the call's; the item's own ``instruction`` wins over it.
    """
    task = embedding_instruction(item.instruction if item.instruction is not None else instruction)
    return [
        Control(IM_START), "system\n" + task, Control(IM_END), "\n",
        Control(IM_START), "user\n", *_content(item), Control(IM_END), "\n",
        Control(IM_START), "assistant\n",
    ]  # fmt: skip


def rerank_parts(query: VLInput, document: VLInput, instruction: str) -> list[Part]:
    """Return the official reranker prompt of one pair (images and videos numbered query first, then document).

    The user turn is ``<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}``: no newline before
    ``<Query>:`` and no space after either colon, as the official code writes it.
    """
    offset, video_offset = len(query.images), len(query.videos)
    return [
        Control(IM_START), "system\n" + VL_RERANK_SYSTEM, Control(IM_END), "\n",
        Control(IM_START), "user\n", "<Instruct>: " + instruction, "<Query>:", *_content(query),
        "\n<Document>:", *_content(document, offset, video_offset), Control(IM_END), "\n",
        Control(IM_START), "assistant\n",
    ]  # fmt: skip


def _content(item: VLInput, offset: int = 0, video_offset: int = 0) -> list[Part]:
    if not item.texts and not item.images and not item.videos:
        return [EMPTY_CONTENT]
    return [
        *(VideoSlot(video_offset + i) for i in range(len(item.videos))),
        *(ImageSlot(offset + i) for i in range(len(item.images))),
        *item.texts,
    ]


def _videos(value: object, what: str) -> tuple[Any, ...]:
    """A video is a file (a path or its bytes) or the list of its frames; a list of videos is several."""
    if value is None:
        return ()
    if _is_file(value):
        return (_video_file(value, what),)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a video file, a video's frames (a list of images), or a list of videos")
    if not value:
        raise ValueError(f"{what} has no frames; pass a video file or a list of its frames (images)")
    # In a list, bytes are a frame's (an image's) and a path is a frame if it names an image, else a video file.
    several = all(
        isinstance(v, (list, tuple)) or (isinstance(v, (str, os.PathLike)) and not _is_image_path(v)) for v in value
    )
    out: list[Any] = []
    for i, video in enumerate(value if several else [value]):
        where = f"{what}[{i}]" if several else what
        if _is_file(video):
            out.append(_video_file(video, where))
            continue
        if not video:
            raise ValueError(f"{where} has no frames; pass a video file or a list of its frames (images)")
        for j, frame in enumerate(video):
            if not isinstance(frame, (str, bytes, bytearray, os.PathLike)) and not _is_pil(frame):
                kind = type(frame).__name__
                raise TypeError(f"{where}[{j}] is a {kind}; a frame is a PIL image, image bytes or a path")
        out.append(tuple(video))
    return tuple(out)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg")
"""A path with one of these endings, in a list, is a frame; another path is a video file (the official rule)."""


def _is_file(value: object) -> bool:
    return isinstance(value, (str, bytes, bytearray, os.PathLike))


def _is_image_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike)) and os.fspath(value).lower().endswith(IMAGE_EXTENSIONS)


def _video_file(value: Any, what: str) -> Any:
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        raise ValueError(f"{what} is a URL; video files are read from disk or bytes only: download it first")
    if isinstance(value, (str, os.PathLike)) and not os.fspath(value):
        raise ValueError(f"{what} is an empty path; pass the path of a video file")
    return bytes(value) if isinstance(value, bytearray) else value


def _as_list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (set, frozenset, Mapping)):
        raise TypeError(f"{what} must be one item or a list, got a {type(value).__name__}")
    return [value]


def _is_pil(value: object) -> bool:
    module = type(value).__module__
    if not module.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(value, Image.Image)
