"""Random test images: random pixels make a wrong resize, patch order or normalisation move the vectors far."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image


def random_image(width: int, height: int, seed: int, mode: Literal["RGB", "RGBA", "L"] = "RGB") -> Image.Image:
    """A ``width`` x ``height`` PIL image of uniformly random pixels, the same for the same ``seed``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(data[..., 0] if channels == 1 else data, mode)
