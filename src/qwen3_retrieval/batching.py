"""Length-sorted batches bounded by a token budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


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
