"""Engines: how token ids are run.

What the ids are (prompts, plain-text tokenization, EOS, truncation) is decided before an engine sees them, in
one place for every engine; Matryoshka cuts and normalisation come after.

* :mod:`~qwen3_retrieval.engines.transformers`: the model in this process, with transformers (the default).
* :mod:`~qwen3_retrieval.engines.vllm_local`: the model in this process, with ``vllm.LLM`` (``engine="vllm"``).
* :mod:`~qwen3_retrieval.engines.vllm_http`: a vLLM server, or many behind one URL (``base_url=...``).

An embedding engine returns each sequence's pooled state (any scale: the core normalises); a scoring engine
returns P(yes) for each ``prefix + tail`` prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import BatchPolicy


def finish_progress(progress: tqdm | None, count: int) -> None:
    """Advance a progress bar by a whole call's ``count`` and close it (engines that run a call in one go)."""
    if progress is not None:
        progress.update(count)
        progress.close()


class EmbeddingEngine(Protocol):
    """Runs token-id sequences; returns each one's raw pooled state (the core cuts and normalises)."""

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return an ``(n, hidden)`` tensor, rows in input order."""
        ...

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`."""
        ...


class ScoringEngine(Protocol):
    """Runs reranker prompts given as a shared prefix and one tail per document; returns P(yes) per prompt."""

    def score(
        self, prefix: list[int], tails: list[list[int]], policy: BatchPolicy, progress: tqdm | None
    ) -> list[float]:
        """Return P(yes) of each ``prefix + tail``, in input order."""
        ...

    async def ascore(self, prefix: list[int], tails: list[list[int]], policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        ...
