"""The Qwen3-VL retrieval models: texts, images and videos, as the official code computes them.

:class:`Qwen3VLEmbedder` and :class:`Qwen3VLReranker` live in :mod:`qwen3_retrieval.vl.models`; the rest of this
package is theirs: prompt layouts (``prompts``), ids and truncation (``processors``), images (``media``), frames
(``video``), prompts read back as chat messages for servers (``messages``) and loading (``loading``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen3_retrieval.vl.models import Qwen3VLEmbedder, Qwen3VLReranker

__all__ = ["Qwen3VLEmbedder", "Qwen3VLReranker"]


def __getattr__(name: str) -> Any:
    # Lazy: options.py reads media.py's and prompts.py's constants, and the models import the options.
    if name in __all__:
        from qwen3_retrieval.vl import models

        value = getattr(models, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qwen3_retrieval.vl' has no attribute {name!r}")
