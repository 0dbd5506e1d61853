"""Images for the Qwen3-VL models: read safely, resized the official way, cut into the vision tower's patches.

The official code (``qwen3_vl_embedding.py`` with qwen-vl-utils) reads an image, composites transparency onto
white, resizes it with PIL so that both sides are multiples of 32 and its area lies within the pixel bounds
(:func:`smart_resize`), then lets the processor only rescale, normalise and cut patches (``do_resize=False``).
This module does the same, so one image always costs ``H * W / 1024`` tokens and never more than
``max_pixels / 1024``. An image is read once to check and size it (:func:`size_image`) and again when its batch
runs (:meth:`SizedImage.patches`), so a call holds no more pixels than its batch needs.

Reading is where untrusted input arrives, so every failure is a one-line ``ValueError`` naming the input and
the fix: a missing or unreadable file, bytes that are no image, a truncated image, a zero-size one, one whose
header claims more pixels than :data:`MAX_SOURCE_PIXELS` (a decompression bomb), or a URL while URLs are off.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

IMAGE_FACTOR = 32
"""Both sides of a resized image are multiples of this: patch 16 x merge 2."""
MIN_PIXELS = 4 * 32 * 32
"""The official embedder's and reranker's smallest image area (4 tokens)."""
MAX_PIXELS = 1800 * 32 * 32
"""The official embedder's and reranker's largest image area (1800 tokens)."""
MAX_RATIO = 200
"""The longest side may be at most this many times the shortest (qwen-vl-utils refuses more)."""
MAX_SOURCE_PIXELS = 100_000_000
"""Images whose header claims more pixels than this (a 600-dpi A4 scan has 35 million) are refused before
decoding: decoding one takes gigabytes, for an image that is resized to at most :data:`MAX_PIXELS` anyway."""
URL_TIMEOUT_S = 30.0
MAX_URL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ImageSettings:
    """How a checkpoint's vision tower wants its pixels (from its config and ``preprocessor_config.json``)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True, eq=False)
class SizedImage:
    """An image read once, to check it and to size it; its pixels are read again when its batch runs.

    So a call with many images holds their sources (which the caller holds anyway), not their pixels: memory
    follows the batch, whose image tokens count against the token budget like any other.
    """

    source: Any
    """A ``PIL.Image``, bytes, or a path (a URL's bytes once fetched)."""
    what: str
    settings: ImageSettings
    height: int
    """The height the image is resized to (a multiple of patch x merge)."""
    width: int

    @property
    def grid(self) -> tuple[int, int, int]:
        """The ``(t, h, w)`` patch grid (``image_grid_thw``)."""
        return 1, self.height // self.settings.patch_size, self.width // self.settings.patch_size

    @property
    def tokens(self) -> int:
        """How many ``<|image_pad|>`` tokens stand for this image in the prompt."""
        t, h, w = self.grid
        return t * h * w // self.settings.merge_size**2

    def patches(self) -> torch.Tensor:
        """Read the image again and cut it into the vision tower's patches (see :func:`patches_of`)."""
        return patches_of(read_image(self.source, self.what), self.settings, (self.height, self.width))

    def png(self) -> bytes:
        """Read the image again and return it resized the official way, as lossless PNG bytes.

        A server's image processor resizes what it is sent by the same rule (:func:`smart_resize`), and an
        image that is already resized is its fixed point: its sides are multiples of the factor and its area is
        within the bounds. So the server cuts exactly these pixels.
        """
        buffer = io.BytesIO()
        resized(read_image(self.source, self.what), (self.height, self.width)).save(buffer, format="PNG")
        return buffer.getvalue()


def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """Return the official ``(height, width)`` an image is resized to (qwen-vl-utils' rule).

    Each side is rounded to a multiple of ``factor``; if the area is then above ``max_pixels`` both sides are
    scaled down by the same factor and floored to multiples, if below ``min_pixels`` scaled up and ceiled.

    Raises:
        ValueError: The aspect ratio is above :data:`MAX_RATIO`.
    """
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"its aspect ratio is {max(height, width) / min(height, width):.0f}:1, above the {MAX_RATIO}:1 the "
            "model accepts; crop it or split it into tiles"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        # Never below one factor: qwen-vl-utils 0.0.14 floors a very thin image's short side to 0 and fails.
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def read_image(source: Any, what: str, *, allow_urls: bool = False) -> Any:
    """Return ``source`` as a decoded RGB ``PIL.Image``, transparency composited onto white.

    Args:
        source: A ``PIL.Image``, raw bytes of an image file, a path (``str``, ``os.PathLike``, or ``file://``),
            or an ``http(s)://`` URL when ``allow_urls``.
        what: How to name the input in an error (``"inputs[3].image"``).
        allow_urls: Fetch ``http(s)://`` URLs (off by default: a URL in untrusted input would make this
            process fetch it).

    Raises:
        ValueError: The image cannot be read (the message names ``what`` and the fix).
        TypeError: ``source`` is none of the accepted types.
    """
    Image, UnidentifiedImageError = _pil()
    if isinstance(source, Image.Image):
        image = source
    else:
        stream = _open_source(source, what, allow_urls)
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError:
            raise ValueError(
                f"{what} claims more pixels than PIL's decompression-bomb limit ({_describe(source)}); "
                "downscale it first"
            ) from None
        except UnidentifiedImageError:
            raise ValueError(
                f"{what} is not an image PIL can read ({_describe(source)}); pass a PNG, JPEG, "
                "WebP, GIF, BMP or TIFF file"
            ) from None
        except (OSError, ValueError) as err:
            raise ValueError(f"{what} cannot be read ({_describe(source)}: {_reason(err)})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"{what} has no pixels ({width}x{height}); pass an image at least 1x1")
    if width * height > MAX_SOURCE_PIXELS:
        raise ValueError(
            f"{what} is {width}x{height}, more than the {MAX_SOURCE_PIXELS:,} pixels read here (it would be "
            f"resized to at most {MAX_PIXELS:,} anyway); downscale it first"
        )
    try:
        image.load()
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data surfaces when decoding
        raise ValueError(
            f"{what} cannot be decoded ({_describe(source)}: {_reason(err)}); is the file complete?"
        ) from None


def size_image(source: Any, settings: ImageSettings, what: str, *, allow_urls: bool = False) -> SizedImage:
    """Read ``source`` once to check it (see :func:`read_image`) and return it with its official resized size.

    Raises:
        ValueError: The image cannot be read, or its aspect ratio is out of bounds (the message names ``what``).
    """
    source = held_source(source, what, allow_urls=allow_urls)
    image = read_image(source, what, allow_urls=allow_urls)
    factor = settings.patch_size * settings.merge_size
    try:
        height, width = smart_resize(image.height, image.width, factor, settings.min_pixels, settings.max_pixels)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    return SizedImage(source, what, settings, height, width)


def held_source(source: Any, what: str, *, allow_urls: bool = False) -> Any:
    """Return what to keep of an image source: its bytes for an allowed URL, else the source as it is.

    A URL is fetched once: a batch reads those bytes, not the URL again.
    """
    if isinstance(source, str) and source.startswith(("http://", "https://")) and allow_urls:
        return _fetch(source, what)
    return source


def patches_of(image: Any, settings: ImageSettings, size: tuple[int, int]) -> torch.Tensor:
    """Resize a decoded RGB image to ``size`` the official way and cut it into the vision tower's patches.

    The resize is PIL's bicubic; then, as the processor does with ``do_resize=False``, the still image is
    repeated to the temporal patch size and cut by :func:`patchify`.
    """
    height, width = size
    pixels = torch.frombuffer(bytearray(resized(image, size).tobytes()), dtype=torch.uint8).view(height, width, 3)
    frames = pixels.permute(2, 0, 1).unsqueeze(0).expand(settings.temporal_patch_size, 3, height, width)
    return patchify(frames, settings)  # a still image fills one temporal patch


def patchify(frames: torch.Tensor, settings: ImageSettings) -> torch.Tensor:
    """Cut 8-bit ``(frames, 3, H, W)`` pixels into the vision tower's patches, as the official processors do.

    Rescale by 1/255, normalise by the mean and std, group the frames by the temporal patch size (their count
    must be a multiple of it), and order the patches merge-group by merge-group, frame group by frame group.
    """
    pixels = frames.to(torch.float32) / 255.0
    mean = torch.tensor(settings.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(settings.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (pixels - mean) / std
    count, _, height, width = pixels.shape
    t, p, m = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    grid_t, grid_h, grid_w = count // t, height // p, width // p
    patches = pixels.reshape(grid_t, t, 3, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, 3 * t * p * p).contiguous()


def resized(image: Any, size: tuple[int, int]) -> Any:
    """Return a decoded RGB image resized to ``(height, width)`` as the official code resizes: PIL's bicubic."""
    from PIL import Image

    return image.resize((size[1], size[0]), Image.Resampling.BICUBIC)


def _pil() -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("reading images needs Pillow: pip install 'qwen3-retrieval[vl]'") from err
    return Image, UnidentifiedImageError


def _open_source(source: Any, what: str, allow_urls: bool) -> Any:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ValueError(f"{what} is empty bytes; pass the bytes of an image file")
        return io.BytesIO(bytes(source))
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"{what} is a {type(source).__name__}; pass a PIL image, the bytes of an image file, or a path")
    if source.startswith(("http://", "https://")):
        if not allow_urls:
            raise ValueError(
                f"{what} is a URL ({_describe(source)}), and fetching URLs is off; download it first, or pass "
                "allow_urls=True if the input is trusted"
            )
        return io.BytesIO(_fetch(source, what))
    path = source.removeprefix("file://")
    if not path:
        raise ValueError(f"{what} is an empty path; pass the path of an image file")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ValueError(f"{what} cannot be opened ({_describe(source)}: {_reason(err)}); check the path") from None
    if not data:
        raise ValueError(f"{what} is an empty file ({_describe(source)}); pass an image file")
    return io.BytesIO(data)


def _fetch(url: str, what: str) -> bytes:
    import httpx

    from qwen3_retrieval.redaction import redact_url

    try:
        with httpx.stream("GET", url, timeout=URL_TIMEOUT_S, follow_redirects=True) as response:
            response.raise_for_status()
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_URL_BYTES:
                    raise ValueError(f"{what}: {redact_url(url)} is larger than {MAX_URL_BYTES:,} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as err:
        raise ValueError(f"{what}: could not fetch {redact_url(url)} ({type(err).__name__})") from None


def _to_rgb(image: Any) -> Any:
    from PIL import Image

    if image.mode == "RGBA":  # the official rule: transparency over white, not black
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def _describe(source: Any) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if text.startswith(("http://", "https://")):
        from qwen3_retrieval.redaction import redact_url

        text = redact_url(text)
    return repr(text if len(text) <= 120 else text[:117] + "...")


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(".")
