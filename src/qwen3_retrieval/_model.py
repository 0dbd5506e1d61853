"""What the embedder and the reranker share: their options, and their parts loaded, shared and once, on first use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.loading import load_shared
from qwen3_retrieval.options import EmbedderOptions, ModelOptions

OptionsT = TypeVar("OptionsT", bound=ModelOptions)
Loaded = TypeVar("Loaded")
Parts = TypeVar("Parts")
T = TypeVar("T")


class OptionView(Generic[T]):
    """A read-only attribute that shows one option, documented by the option's own docstring.

    Args:
        name: The option.
        read: The options' attribute to show, when not the option itself (e.g. ``torch_device``).
    """

    def __init__(self, name: str, read: str | None = None) -> None:
        self.read = read or name
        self.__doc__ = EmbedderOptions.docs().get(name)  # the embedder's options include every shared one

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]  # the class attribute, for documentation tools
        return getattr(obj.options, self.read)


class SharedModel(Generic[OptionsT, Loaded, Parts]):
    """One model's options, and its loaded parts: shared in the process, loaded on the first call.

    Subclasses name how to load (:meth:`_load`, shared by every object with the same ``cache_key``) and what
    each object builds on top of that (:meth:`_build`, its processor and engine).
    """

    options: OptionsT

    model = OptionView[str]("model")
    device = OptionView[torch.device]("device", read="torch_device")
    dtype = OptionView[torch.dtype]("dtype", read="torch_dtype")
    instruction = OptionView[str]("instruction")
    max_length = OptionView[int]("max_length")
    engine = OptionView[str]("engine")
    base_url = OptionView[str | None]("base_url", read="shown_url")  # a password in it shown as ***
    batch_tokens = OptionView[int | None]("batch_tokens")
    batch_wait_ms = OptionView[float | None]("batch_wait_ms")

    def __init__(self, options: OptionsT) -> None:
        self.options = options
        self._loaded: Loaded | None = None
        self._parts: Parts | None = None

    @classmethod
    def from_options(cls, options: OptionsT) -> Any:
        """Return a model object for ``options`` (a record built beforehand, or one from another object)."""
        obj = cls.__new__(cls)
        SharedModel.__init__(obj, options)
        return obj

    def __repr__(self) -> str:
        where = f"base_url={self.base_url!r}" if self.base_url else f"device='{self.device}', dtype={self.dtype}"
        return f"{type(self).__name__}(model={self.model!r}, {where})"

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (e.g. LlamaIndex's IngestionPipeline with num_workers > 1) copies the options, never the
        # weights: the copy loads lazily, and shares the process-wide model if one is loaded there.
        return {"options": self.options, "_loaded": None, "_parts": None}

    @property
    def cache_key(self) -> Hashable:
        """The key under which the loaded model is shared with other objects in this process."""
        return self.options.cache_key

    @property
    def loaded(self) -> Loaded | None:
        """The loaded model this object runs on (shared with others of the same ``cache_key``); None until used."""
        return self._loaded

    def ready(self) -> Parts:
        """Return this object's processor and engine, loading the model (or taking the shared copy) on first use."""
        parts = self._parts
        if parts is None:
            loaded = load_shared(self.cache_key, lambda: self._load(self.options))
            parts = self._build(loaded)
            self._loaded, self._parts = loaded, parts
        return parts

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Load the model if needed, wait up to ``timeout`` seconds for its regions' compile; return :attr:`compiled`.

        Calls never need this: they run eager until the compiled regions are ready (see the ``compile`` option).
        Benchmarks and tests use it to time or check the compiled path on its own.
        """
        switch = _switch_of(self.ready())
        return switch.wait(timeout) if switch is not None else False

    @property
    def compiled(self) -> bool:
        """Whether calls run compiled regions now (False before the model is loaded, and on engines without any)."""
        switch = _switch_of(self._parts) if self._parts is not None else None
        return switch is not None and switch.compiled

    async def aready(self) -> Parts:
        """Async :meth:`ready`: a first call loads in a thread, so the event loop keeps running meanwhile."""
        return self._parts if self._parts is not None else await asyncio.to_thread(self.ready)

    def _load(self, options: OptionsT) -> Loaded:
        raise NotImplementedError

    def _build(self, loaded: Loaded) -> Parts:
        raise NotImplementedError

    def _progress(self, total: int, desc: str) -> tqdm | None:
        return tqdm(total=total, desc=desc, unit="text") if self.options.show_progress else None


def _switch_of(parts: Any) -> Any:
    """The engine's region switch (:class:`qwen3_retrieval.kernels.compiled.RegionSwitch`), if it has one."""
    return getattr(parts[1], "switch", None)


# Tokenizing a few short texts takes microseconds, less than a hop to a worker thread; more is moved off the
# event loop so that it keeps running.
INLINE_CHARS = 16_384


async def off_the_loop(work: Callable[[], T], chars: int) -> T:
    """Run CPU work of about ``chars`` characters of text from async code: inline when small, else in a thread."""
    return work() if chars <= INLINE_CHARS else await asyncio.to_thread(work)
