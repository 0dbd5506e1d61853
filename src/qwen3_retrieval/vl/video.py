"""Videos given as frames, for the Qwen3-VL models: sampled, sized and cut as the official code does.

The official code (``qwen3_vl_embedding.py`` / ``qwen3_vl_reranker.py`` with qwen-vl-utils 0.0.14 and
transformers 4.57, the versions it locks) takes a video as a list of frames and:

1. keeps at most 64 of them, evenly spread (``np.linspace(0, n - 1, 64, dtype=int)``);
2. reads each as an image (transparency over white) and resizes it with PIL's bicubic so that both sides are
   multiples of 64, not 32: qwen-vl-utils reads frames with twice the model's patch size. The bounds are 4 to
   16384 cells of 64 x 64;
3. pads an odd count with the last frame (a temporal patch is two frames);
4. resizes the clip again, to multiples of 32 with at least 128 tokens and at most 768 tokens a frame, and at
   most 7,864,320 pixels over all frames: torchvision's bicubic with antialiasing, on float pixels rounded back
   to 8 bits (no resize when the size is already right);
5. rescales, normalises and cuts each pair of frames as one temporal patch;
6. writes each pair in the prompt as ``<{t:.1f} seconds>`` then ``<|vision_start|>``, its ``<|video_pad|>``
   tokens and ``<|vision_end|>``, where ``t`` is the pair's mean time at 2 frames per second.

A video file is decoded with PyAV (``pip install "qwen3-retrieval[video]"``) where the official code uses decord:
at 1 frame per second, at least 4 and at most 64 frames, an even count, taken at evenly spaced indices
(``linspace(0, n - 1, count).round()``); each frame keeps its decoded size for the one resize to multiples of 32
(128 to 768 tokens a frame), and the timestamps count in the file's own frame rate.

As for images, each frame is read once to check and size it and again when its batch runs; a file is decoded
once to size it (only its first frame is kept) and again when its batch runs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qwen3_retrieval.vl.media import (
    MAX_SOURCE_PIXELS,
    ImageSettings,
    held_source,
    patchify,
    read_image,
    resized,
    smart_resize,
)

MAX_FRAMES = 64
"""The official embedder and reranker keep at most this many frames of a video."""
FRAME_FPS = 2.0
"""The frame rate qwen-vl-utils gives a list of frames (``sample_fps``): what the timestamps count in."""
FRAME_FACTOR = 64
"""Frames are first resized to multiples of this (qwen-vl-utils passes 32 as the patch size; the merge is 2)."""
FRAME_MIN_PIXELS, FRAME_MAX_PIXELS = 4 * FRAME_FACTOR**2, 16384 * FRAME_FACTOR**2
VIDEO_MIN_PIXELS, VIDEO_FRAME_MAX_PIXELS = 128 * 32 * 32, 768 * 32 * 32
VIDEO_TOTAL_PIXELS = 10 * VIDEO_FRAME_MAX_PIXELS
"""The official ``MAX_TOTAL_PIXELS``: 7,864,320 pixels over a video's frames (given as frames)."""
FILE_TOTAL_PIXELS = 128000 * 32 * 32 * 0.9
"""qwen-vl-utils' default total for a video file (the official code passes none for files)."""
FILE_FPS, FILE_MIN_FRAMES = 1.0, 4
"""The official code samples files at 1 frame per second, and qwen-vl-utils takes at least 4 frames."""


@dataclass(frozen=True, eq=False)
class SizedVideo:
    """A video's sampled frames, read once to check and size them; their pixels are read again when it runs."""

    frames: tuple[Any, ...]
    """The sampled frames' sources (PIL images, bytes or paths), before the odd one is repeated; for a video
    file, the file (path or bytes) alone."""
    what: str
    settings: ImageSettings
    frame_size: tuple[int, int]
    """``(height, width)`` of each frame before the clip's resize (for frames, after the first resize)."""
    height: int
    """The height the clip is resized to (a multiple of patch x merge)."""
    width: int
    indices: tuple[int, ...] = ()
    """For a video file: the decoded frames taken, by index."""
    fps: float = FRAME_FPS
    """The frame rate the timestamps count in."""

    @property
    def is_file(self) -> bool:
        """Whether this is a video file (else a list of frames)."""
        return bool(self.indices)

    @property
    def count(self) -> int:
        """Frames the model sees: the sampled ones, the last repeated if their count is odd."""
        taken = len(self.indices) if self.is_file else len(self.frames)
        return taken + taken % self.settings.temporal_patch_size

    @property
    def grid(self) -> tuple[int, int, int]:
        """The ``(t, h, w)`` patch grid (``video_grid_thw``)."""
        p = self.settings.patch_size
        return self.count // self.settings.temporal_patch_size, self.height // p, self.width // p

    @property
    def pair_tokens(self) -> int:
        """``<|video_pad|>`` tokens per temporal patch (pair of frames)."""
        _, h, w = self.grid
        return h * w // self.settings.merge_size**2

    @property
    def tokens(self) -> int:
        """All the tokens this video adds to a prompt, its timestamps' text aside."""
        return self.grid[0] * (self.pair_tokens + 2)

    def timestamps(self) -> list[str]:
        """The text before each pair: ``<0.2 seconds>``, ``<1.2 seconds>``… (mean time of its frames)."""
        t = self.settings.temporal_patch_size
        indices = list(self.indices) if self.is_file else list(range(self.count))
        indices += indices[-1:] * (self.count - len(indices))
        times = [i / self.fps for i in indices]
        return [f"<{(times[i] + times[i + t - 1]) / 2:.1f} seconds>" for i in range(0, self.count, t)]

    def patches(self) -> torch.Tensor:
        """Read the frames again, resize them as the official code does, and cut them into patches.

        Frames are read and resized one at a time (the resize treats each frame alone), so a video in a large
        format never holds more than one of its source frames.
        """
        return patchify(torch.stack(list(self.clip())), self.settings)

    def clip(self) -> Iterator[torch.Tensor]:
        """Read the frames the model sees again, each ``(3, height, width)`` 8-bit pixels resized the official way.

        The last is repeated if their count is odd (a temporal patch is two frames).
        """
        frame = None
        for frame in map(self._clip_size, self._frames()):
            yield frame
        taken = len(self.indices) if self.is_file else len(self.frames)
        for _ in range(self.count - taken):
            assert frame is not None
            yield frame

    def times(self) -> tuple[float, list[int], int]:
        """The frame rate, the indices of the frames :meth:`clip` gives, and the source's frame count.

        The timestamps are computed from them; the official code numbers a list of frames after the odd one is
        repeated.
        """
        if self.is_file:
            return self.fps, list(self.indices), max(self.indices) + 1
        return self.fps, list(range(self.count)), self.count

    def _frames(self) -> Iterator[torch.Tensor]:
        """Each sampled frame as ``(3, H, W)`` 8-bit pixels of :attr:`frame_size`, in order."""
        height, width = self.frame_size
        if self.is_file:
            for array in decoded_frames(self.frames[0], self.what, set(self.indices)):
                if array.shape[:2] != self.frame_size:
                    raise ValueError(f"{self.what} changes its frame size mid-stream; re-encode it at one size")
                yield torch.from_numpy(array).permute(2, 0, 1)
            return
        for i, source in enumerate(self.frames):
            image = resized(read_image(source, f"{self.what}[{i}]"), self.frame_size)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
            yield pixels.permute(2, 0, 1)

    def _clip_size(self, frame: torch.Tensor) -> torch.Tensor:
        """Resize a frame as torchvision does a tensor: float pixels, antialiased bicubic, rounded to 8 bits."""
        if (self.height, self.width) == self.frame_size:
            return frame
        scaled = torch.nn.functional.interpolate(
            frame[None].to(torch.float32),
            size=(self.height, self.width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        return scaled[0].clamp(0, 255).round().to(torch.uint8)


def size_video(frames: Any, settings: ImageSettings, what: str, *, allow_urls: bool = False) -> SizedVideo:
    """Sample a video's frames (a list of them, or a video file) and read each once to check and size it.

    Raises:
        ValueError: A frame or the file cannot be read, the frames do not share one size, or there are none (the
            message names ``what``).
    """
    if not isinstance(frames, (list, tuple)):
        return _size_file(frames, settings, what)
    sources = list(frames)
    if not sources:
        raise ValueError(f"{what} has no frames; pass a list of its frames (images)")
    if len(sources) > MAX_FRAMES:
        sources = [sources[i] for i in np.linspace(0, len(sources) - 1, MAX_FRAMES, dtype=int).tolist()]
    sources = [held_source(source, f"{what}[{i}]", allow_urls=allow_urls) for i, source in enumerate(sources)]
    sizes = set()
    for i, source in enumerate(sources):
        image = read_image(source, f"{what}[{i}]")
        try:
            sizes.add(smart_resize(image.height, image.width, FRAME_FACTOR, FRAME_MIN_PIXELS, FRAME_MAX_PIXELS))
        except ValueError as err:
            raise ValueError(f"{what}[{i}]: {err}") from None
        if len(sizes) > 1:
            raise ValueError(
                f"{what}[{i}] has another shape than the frames before it (resized to {sorted(sizes)}); the frames "
                "of one video must share one size"
            )
    (frame_size,) = sizes
    count = len(sources) + len(sources) % settings.temporal_patch_size
    cap = max(min(VIDEO_FRAME_MAX_PIXELS, VIDEO_TOTAL_PIXELS / count * 2), int(VIDEO_MIN_PIXELS * 1.05))
    factor = settings.patch_size * settings.merge_size
    height, width = smart_resize(frame_size[0], frame_size[1], factor, VIDEO_MIN_PIXELS, cap)
    return SizedVideo(tuple(sources), what, settings, frame_size, height, width)


def _size_file(file: Any, settings: ImageSettings, what: str) -> SizedVideo:
    """Sample a video file as the official code does (decord's reader: frame count and average rate)."""
    total, fps, first = _probe(file, what)
    count = min(min(max(total / fps * FILE_FPS, FILE_MIN_FRAMES), MAX_FRAMES), total)
    count = int(count // 2 * 2)
    if count < 2:
        raise ValueError(f"{what} has {total} frame(s); a video needs at least 2")
    indices = torch.linspace(0, total - 1, count).round().long().tolist()
    cap = max(min(VIDEO_FRAME_MAX_PIXELS, FILE_TOTAL_PIXELS / count * 2), int(VIDEO_MIN_PIXELS * 1.05))
    factor = settings.patch_size * settings.merge_size
    try:
        height, width = smart_resize(first[0], first[1], factor, VIDEO_MIN_PIXELS, cap)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    return SizedVideo((file,), what, settings, first, height, width, tuple(indices), fps)


def decoded_frames(file: Any, what: str, wanted: set[int]) -> Iterator[np.ndarray]:
    """Decode a video file; yield its frames numbered in ``wanted`` as 8-bit RGB ``(H, W, 3)`` arrays, in order."""
    found = 0
    with _opened(file, what) as (container, stream):
        frames = enumerate(container.decode(stream))
        while found < len(wanted):
            try:
                index, frame = next(frames)
            except StopIteration:
                break
            except Exception as err:  # PyAV's errors (FFmpeg's) share no base class with a useful name
                raise ValueError(f"{what} cannot be decoded ({_reason(err)}); is the file complete?") from None
            if index in wanted:
                found += 1
                yield frame.to_ndarray(format="rgb24")
    if found < len(wanted):
        raise ValueError(f"{what} has fewer frames than its header said; is the file complete?")


def _probe(file: Any, what: str) -> tuple[int, float, tuple[int, int]]:
    """The frame count, the average frame rate, and the first frame's ``(height, width)``."""
    with _opened(file, what) as (container, stream):
        rate = stream.average_rate or stream.base_rate
        if not rate or rate <= 0:
            raise ValueError(f"{what} has no frame rate; re-encode it, or pass its frames")
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if total < 1:
        raise ValueError(f"{what} has no video frames; pass a video file, or its frames")
    first = next(decoded_frames(file, what, {0}))
    if first.shape[0] * first.shape[1] > MAX_SOURCE_PIXELS:
        raise ValueError(
            f"{what} has {first.shape[1]}x{first.shape[0]} frames, more than the {MAX_SOURCE_PIXELS:,} pixels read "
            "here; downscale it first"
        )
    return total, float(rate), (first.shape[0], first.shape[1])


@contextmanager
def _opened(file: Any, what: str) -> Iterator[tuple[Any, Any]]:
    """A video file opened with PyAV, and its first video stream; every failure a one-line ``ValueError``."""
    try:
        import av
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError('reading video files needs PyAV: pip install "qwen3-retrieval[video]"') from err
    if isinstance(file, (bytes, bytearray)):
        source: Any = io.BytesIO(bytes(file))
    else:
        source = os.fspath(file).removeprefix("file://")
    try:
        container = av.open(source)
    except Exception as err:  # FFmpeg's errors: a missing file, not a container, an unknown format
        raise ValueError(f"{what} cannot be opened as a video ({_reason(err)}); pass a video file") from None
    with container:
        streams = container.streams.video
        if not streams:
            raise ValueError(f"{what} has no video stream; pass a video file")
        codec = streams[0].codec_context
        if codec is None or not codec.codec.is_decoder:
            raise ValueError(f"{what} uses a codec this FFmpeg cannot decode; re-encode it (H.264, VP9...)")
        yield container, streams[0]


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]
