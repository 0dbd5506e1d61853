"""The optional libraries behind the extras, imported on first use with a one-line error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from qwen3_retrieval.rag.errors import RagError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise a one-line :class:`RagError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RagError(f"{what} needs the '{extra}' extra: pip install 'qwen3-retrieval[{extra}]' (or [all])") from None
