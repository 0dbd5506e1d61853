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

As for images, each frame is read once to check and size it and again when its batch runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qwen3_retrieval.media import ImageSettings, held_source, patchify, read_image, resized, smart_resize

MAX_FRAMES = 64
"""The official embedder and reranker keep at most this many frames of a video."""
FRAME_FPS = 2.0
"""The frame rate qwen-vl-utils gives a list of frames (``sample_fps``): what the timestamps count in."""
FRAME_FACTOR = 64
"""Frames are first resized to multiples of this (qwen-vl-utils passes 32 as the patch size; the merge is 2)."""
FRAME_MIN_PIXELS, FRAME_MAX_PIXELS = 4 * FRAME_FACTOR**2, 16384 * FRAME_FACTOR**2
VIDEO_MIN_PIXELS, VIDEO_FRAME_MAX_PIXELS = 128 * 32 * 32, 768 * 32 * 32
VIDEO_TOTAL_PIXELS = 10 * VIDEO_FRAME_MAX_PIXELS
"""The official ``MAX_TOTAL_PIXELS``: 7,864,320 pixels over a video's frames."""


@dataclass(frozen=True, eq=False)
class SizedVideo:
    """A video's sampled frames, read once to check and size them; their pixels are read again when it runs."""

    frames: tuple[Any, ...]
    """The sampled frames' sources (PIL images, bytes or paths), before the odd one is repeated."""
    what: str
    settings: ImageSettings
    frame_size: tuple[int, int]
    """``(height, width)`` of each frame after the first resize (multiples of 64)."""
    height: int
    """The height the clip is resized to (a multiple of patch x merge)."""
    width: int

    @property
    def count(self) -> int:
        """Frames the model sees: the sampled ones, the last repeated if their count is odd."""
        return len(self.frames) + len(self.frames) % self.settings.temporal_patch_size

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
        times = [i / FRAME_FPS for i in range(self.count)]
        return [f"<{(times[i] + times[i + t - 1]) / 2:.1f} seconds>" for i in range(0, self.count, t)]

    def patches(self) -> torch.Tensor:
        """Read the frames again, resize them as the official code does, and cut them into patches."""
        height, width = self.frame_size
        frames = []
        for i, source in enumerate(self.frames):
            image = resized(read_image(source, f"{self.what}[{i}]"), self.frame_size)
            frames.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3))
        frames += frames[-1:] * (self.count - len(frames))
        pixels = torch.stack(frames).permute(0, 3, 1, 2)
        if (self.height, self.width) != self.frame_size:
            # torchvision's tensor resize: float pixels, bicubic with antialiasing, clamped and rounded to 8 bits.
            scaled = torch.nn.functional.interpolate(
                pixels.to(torch.float32), size=(self.height, self.width), mode="bicubic", align_corners=False,
                antialias=True,
            )  # fmt: skip
            pixels = scaled.clamp(0, 255).round().to(torch.uint8)
        return patchify(pixels, self.settings)


def size_video(frames: Any, settings: ImageSettings, what: str, *, allow_urls: bool = False) -> SizedVideo:
    """Sample a video's frames and read each once to check it and size it.

    Raises:
        ValueError: A frame cannot be read, the frames do not share one size, or there are none (the message
            names ``what``).
    """
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
