"""Loading models: what a model's options name (its tokenizer and the engine that runs it), once per process.

Objects only record what to load; the first call that needs weights loads them through :func:`load_shared`,
which keeps one copy per :attr:`~qwen3_retrieval.options.ModelOptions.cache_key` for as long as any object
holds it. The loaded parts hold weights (or a server client) and no per-object option, so objects that differ
only in, say, ``dimensions`` or ``instruction`` share them. One load runs at a time in the whole process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from qwen3_retrieval.engines import EmbeddingEngine, RerankPrompts, ScoringEngine
from qwen3_retrieval.options import EmbedderOptions, ModelOptions, RerankerOptions
from qwen3_retrieval.processors import answer_token_ids
from qwen3_retrieval.tokenization import TextTokenizer

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


@dataclass(eq=False)
class LoadedEmbedding:
    """An embedding model's shared parts."""

    tokenizer: TextTokenizer
    engine: EmbeddingEngine[Sequence[int]]
    hidden_size: int


@dataclass(eq=False)
class LoadedReranker:
    """A reranker's shared parts."""

    tokenizer: TextTokenizer
    engine: ScoringEngine[RerankPrompts]


def load_embedding(options: EmbedderOptions) -> LoadedEmbedding:
    """Load the tokenizer of an embedding model, and the engine its options name."""
    tokenizer = TextTokenizer(pretrained(options, "AutoTokenizer"))
    loaded: LoadedEmbedding = options.runs_on.loader().load_embedding(options, tokenizer)
    return loaded


def load_reranker(options: RerankerOptions) -> LoadedReranker:
    """Load the tokenizer of a reranker (a causal LM, or a converted one-label classifier), and its engine."""
    tokenizer = TextTokenizer(pretrained(options, "AutoTokenizer"))
    config = pretrained(options, "AutoConfig")
    seq_cls = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
    if seq_cls and config.num_labels != 1:
        raise ValueError(
            f"{options.model!r} is a sequence classifier with {config.num_labels} labels; a converted "
            "Qwen3-Reranker has exactly one (score = sigmoid(logit))"
        )
    yes_no = None if seq_cls else answer_token_ids(tokenizer, options.model)
    engine = options.runs_on.loader().load_scoring(options, tokenizer, config, yes_no)
    return LoadedReranker(tokenizer, engine)


def pretrained(options: ModelOptions, auto_class: str, **kwargs: Any) -> Any:
    """``transformers.<auto_class>.from_pretrained`` on the options' model, "cannot load" as a ``ValueError``."""
    import transformers

    try:
        with quiet_transformers(not options.show_progress):
            return getattr(transformers, auto_class).from_pretrained(options.model, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as err:
        raise load_error(options.model, err) from err
