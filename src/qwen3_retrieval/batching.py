"""How sequences are grouped into batches: the batch policy, and length-sorted batches within its token budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.kernels.forking import fork_point


def token_budget_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    *,
    max_padding: float = 1.0,
    packed: bool = False,
    groups: Sequence[int] | None = None,
) -> list[list[int]]:
    """Group sequence indices into batches whose padded size (rows x longest) stays within ``batch_tokens``.

    With ``packed`` a batch holds no padding and its size is the sum of its lengths. With ``groups`` (a group
    number per sequence) the sequences of one group come together, groups in increasing order.

    Longest sequences come first, so a budget that does not fit in memory fails on the first batch, and
    sequences of similar length share a batch. A batch also stops growing before pad tokens would exceed
    ``max_padding`` of its padded size (0 keeps one length per batch; 1 bounds nothing). A sequence longer
    than the budget gets a batch of its own.
    """
    group_of = groups if groups is not None else [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (group_of[i], -lengths[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        if current:
            # Sorted longest first (within a group), so the first row of the batch sets its padded width.
            padded = real + lengths[index] if packed else (len(current) + 1) * lengths[current[0]]
            if padded > batch_tokens or padded - real - lengths[index] > max_padding * padded:
                batches.append(current)
                current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


def run_in_batches(
    batches: list[list[int]],
    run: Callable[[list[int]], torch.Tensor],
    *,
    device: torch.device,
    progress: tqdm | None,
) -> torch.Tensor:
    """Call ``run(batch)`` for each batch of indices, in order; return its rows gathered in index order.

    ``run`` returns one row per index of its batch. The progress bar, if any, advances per batch and is closed.
    """
    out: torch.Tensor | None = None
    for batch in batches:
        fork_point()  # a fork waiting for this call goes now, between batches (see qwen3_retrieval.kernels.forking)
        rows = run(batch)
        if out is None:
            out = torch.empty((sum(map(len, batches)), rows.shape[1]), dtype=rows.dtype, device=device)
        out[torch.as_tensor(batch, device=device)] = rows
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.close()
    assert out is not None, "run_in_batches needs at least one sequence"
    return out


@dataclass(frozen=True)
class BatchPolicy:
    """How sequences are grouped and laid out on one device."""

    batch_tokens: int
    """Token budget of one batch: its real tokens when packed, rows x longest when padded."""
    max_padding: float
    """Padded layouts: the largest share of a batch's padded size that may be pad tokens."""
    layout: Literal["packed", "left", "right"]
    """``"packed"`` (the default): a batch's sequences end to end in one row, attention inside each (see
    :mod:`qwen3_retrieval.kernels.packed`). Padded layouts serve an ``attn_implementation`` the caller names:
    ``"left"``, pads first behind an attention mask (what transformers' kernels expect on GPU); ``"right"``, pads
    last and no mask, since causal attention already keeps every real token from seeing them."""
    share_prefix: bool = True
    """Reranking: run the prompt part every document of a query shares once per call, each document on top."""
    micro_batch: bool = True
    """Concurrent callers: merge calls into shared runs on one worker (see :mod:`qwen3_retrieval.kernels.microbatch`);
    False runs each call alone in its caller's thread."""
    batch_wait_s: float = 0.002
    """How long a merged run waits for more calls while calls are streaming in; a lone caller never waits."""


def default_policy(device: torch.device, *, packed: bool = True) -> BatchPolicy:
    """Return the batching policy for ``device``: packed, or padded for a caller-named attention kernel.

    Packed batches hold no padding, so their budget only bounds memory and how much work one call shares: on a
    CPU, budgets from 512 to 4096 tokens timed alike, and 1024 keeps activations small. GPUs need large batches
    to fill the device.
    """
    if device.type in ("cuda", "mps"):
        budget = 16384 if device.type == "cuda" else 8192
        return BatchPolicy(batch_tokens=budget, max_padding=1.0, layout="packed" if packed else "left")
    if packed:
        return BatchPolicy(batch_tokens=CPU_PACKED_BATCH_TOKENS, max_padding=1.0, layout="packed")
    # Padded on CPU: a mask takes attention off the fused causal kernel (twice as slow), right pads cost only
    # themselves, and small groups of similar lengths did best (budget 512 with up to 25% pads).
    return BatchPolicy(batch_tokens=512, max_padding=0.25, layout="right")


CPU_PACKED_BATCH_TOKENS = 1024
