"""The default engine: the model in this process, run by transformers (see :mod:`qwen3_retrieval.forward`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.devices import BatchPolicy
from qwen3_retrieval.forward import last_hidden_after_prefix, last_hidden_batched


class TransformersEmbedding:
    """Last-token states of a transformers backbone (the raw pooled embedding)."""

    def __init__(self, backbone: torch.nn.Module, pad_id: int, device: torch.device) -> None:
        self.backbone, self.pad_id, self.device = backbone, pad_id, device

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return each sequence's final hidden state at its last token."""
        return last_hidden_batched(
            self.backbone, sequences, pad_id=self.pad_id, policy=policy, device=self.device, progress=progress
        )

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        """Run :meth:`embed` in a worker thread: the work is compute, the event loop keeps running."""
        return await asyncio.to_thread(self.embed, sequences, policy, None)


class TransformersScoring:
    """P(yes) = sigmoid(w . h) at the last position, with w the yes-minus-no direction of the LM head.

    With ``policy.share_prefix`` the instruction-and-query prefix runs once per call, each document on top of it.
    """

    def __init__(
        self, backbone: torch.nn.Module, direction: torch.Tensor, pad_id: int, device: torch.device
    ) -> None:
        self.backbone, self.direction, self.pad_id, self.device = backbone, direction, pad_id, device

    def score(
        self, prefix: list[int], tails: list[list[int]], policy: BatchPolicy, progress: tqdm | None
    ) -> list[float]:
        """Return P(yes) of each ``prefix + tail``."""
        options = {"pad_id": self.pad_id, "policy": policy, "device": self.device, "progress": progress}
        if policy.share_prefix:
            hidden = last_hidden_after_prefix(self.backbone, prefix, tails, **options)  # type: ignore[arg-type]
        else:
            hidden = last_hidden_batched(self.backbone, [prefix + tail for tail in tails], **options)  # type: ignore[arg-type]
        return torch.sigmoid(hidden.float() @ self.direction).cpu().tolist()

    async def ascore(self, prefix: list[int], tails: list[list[int]], policy: BatchPolicy) -> list[float]:
        """Run :meth:`score` in a worker thread."""
        return await asyncio.to_thread(self.score, prefix, tails, policy, None)
