"""Engines: how prepared prompts are run, for the text and the Qwen3-VL models alike, sync and async.

What the prompts are (templates, plain-text tokenization, EOS, truncation, images' patches) is decided before an
engine sees them, by the models' processors, in one place for every engine; Matryoshka cuts and normalisation
come after. Each engine is named once, in :mod:`~qwen3_retrieval.engines.registry`, and loads in its own module:

* :mod:`~qwen3_retrieval.engines.transformers`: the text models in this process, with transformers (the default);
* :mod:`~qwen3_retrieval.engines.transformers_vl`: the Qwen3-VL models in this process, with transformers;
* :mod:`~qwen3_retrieval.engines.vllm_local`: the text models in this process, with ``vllm.LLM`` (``engine="vllm"``);
* :mod:`~qwen3_retrieval.engines.vllm_http`: the text models on a vLLM server, or many behind one URL
  (``base_url=...``);
* :mod:`~qwen3_retrieval.engines.vllm_http_vl`: the Qwen3-VL models on a vLLM server.

An embedding engine returns each prompt's pooled state (any scale: the core normalises); a scoring engine
returns P(yes) for each prompt. The text models' prompts are token ids (a reranker's as one shared prefix and a
tail per document, :class:`RerankPrompts`); the Qwen3-VL models' are :class:`~qwen3_retrieval.vl.processors.VLSequence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import BatchPolicy

Item = TypeVar("Item", contravariant=True)
Prompts = TypeVar("Prompts", contravariant=True)


class RerankPrompts(NamedTuple):
    """A text reranker's prompts: ``prefix + tail`` for each tail (one per document)."""

    prefix: list[int]
    tails: list[list[int]]

    def whole(self) -> list[list[int]]:
        """Each prompt whole, ``prefix + tail``: what an engine without prefix reuse runs."""
        return [self.prefix + tail for tail in self.tails]


def finish_progress(progress: tqdm | None, count: int) -> None:
    """Advance a progress bar by a whole call's ``count`` and close it (engines that run a call in one go)."""
    if progress is not None:
        progress.update(count)
        progress.close()


class EmbeddingEngine(Protocol[Item]):
    """Runs prompts; returns each one's raw pooled state (the core cuts and normalises)."""

    def embed(self, sequences: Sequence[Item], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return an ``(n, hidden)`` tensor, rows in input order."""
        ...

    async def aembed(self, sequences: Sequence[Item], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`."""
        ...


class ScoringEngine(Protocol[Prompts]):
    """Runs reranker prompts; returns P(yes) per prompt."""

    def score(self, prompts: Prompts, policy: BatchPolicy, progress: tqdm | None) -> list[float]:
        """Return P(yes) of each prompt, in input order."""
        ...

    async def ascore(self, prompts: Prompts, policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        ...
