"""Lazy, shared, thread-safe model loading.

Objects only record what to load; the first call that needs weights loads them through :func:`load_shared`,
which keeps one copy per (kind, model, device, dtype, attention) for as long as any object holds it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_cache: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()
# One load at a time in the whole process, whatever the model: transformers' loading is not thread-safe across
# models (its lazy imports and meta-device initialisation race, giving "cannot import name 'AutoTokenizer'" or
# "Cannot copy out of meta tensor" when an embedder and a reranker load together). Loads are rare and mostly
# disk- and CPU-bound, so running them one after the other costs about what running them together would.
_load_lock = threading.RLock()


def load_shared(key: Hashable, loader: Callable[[], T]) -> T:
    """Return the object cached under ``key``, calling ``loader`` once if no live copy exists.

    Concurrent callers asking for the same key wait for one load instead of loading twice; loads of different
    keys run one after the other (see :func:`loading_lock`).
    """
    with _cache_lock:
        found = _cache.get(key)
    if found is not None:
        return found
    with _load_lock:
        with _cache_lock:
            found = _cache.get(key)
        if found is not None:
            return found
        loaded = loader()
        with _cache_lock:
            _cache[key] = loaded
        return loaded


def loading_lock() -> threading.RLock:
    """The process-wide lock every model, tokenizer and config load holds (re-entrant)."""
    return _load_lock


def _reset_after_fork() -> None:
    # A fork copies a lock held by another thread in its locked state, with no thread left to release it.
    global _cache_lock, _load_lock
    _cache_lock = threading.Lock()
    _load_lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_after_fork)


def cached_keys() -> list[Hashable]:
    """Return the keys of the models currently loaded in this process (for diagnostics and tests)."""
    with _cache_lock:
        return list(_cache.keys())


def model_source(model: str | os.PathLike[str]) -> str:
    """Return ``model`` as a string, raising ``ValueError`` for a local path that does not exist.

    A string that names an existing folder is a local checkpoint. One that looks like a path (starts with ``.``,
    ``/`` or ``~``, or has more than one ``/``) but is missing is reported here, before transformers turns it
    into a confusing hub lookup. Anything else is treated as a hub id such as ``Qwen/Qwen3-Embedding-0.6B``.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a hub id or a folder path, got {type(model).__name__}")
    text = os.fspath(model)
    if not text.strip():
        raise ValueError("model is empty; pass a hub id such as 'Qwen/Qwen3-Embedding-0.6B' or a local folder")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if isinstance(model, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"model folder {text!r} does not exist; pass an existing checkpoint folder or a hub id")
    return text


def load_error(model: str, err: BaseException) -> ValueError:
    """Return the error to raise when ``model`` cannot be loaded, with the fixes a user can apply."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    hint = (
        "HF_HUB_OFFLINE is set, so only models already in the local Hugging Face cache can be used; "
        f"download it once with `hf download {model}` or pass a local folder"
        if offline
        else "check the name, pass a local folder holding the checkpoint, or download it first with "
        f"`hf download {model}` (set HF_HUB_OFFLINE=1 to use only the local cache)"
    )
    reason = " ".join(str(err).split()).rstrip(".")  # one line: the command prints it as its whole message
    return ValueError(f"could not load model {model!r} ({type(err).__name__}: {reason}). Fix: {hint}")


@contextlib.contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' own progress bars (weight loading and saving) while the block runs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()
