"""Length-sorted batches bounded by a token budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, *, max_padding: float = 1.0) -> list[list[int]]:
    """Group sequence indices into batches whose padded size (rows x longest) stays within ``batch_tokens``.

    Longest sequences come first, so a budget that does not fit in memory fails on the first batch, and
    sequences of similar length share a batch. A batch also stops growing before pad tokens would exceed
    ``max_padding`` of its padded size (0 keeps one length per batch; 1 bounds nothing). A sequence longer
    than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        if current:
            # Sorted longest first, so the first row of the batch sets its padded width.
            padded = (len(current) + 1) * lengths[current[0]]
            if padded > batch_tokens or padded - real - lengths[index] > max_padding * padded:
                batches.append(current)
                current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


def run_in_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    run: Callable[[list[int]], torch.Tensor],
    *,
    max_padding: float,
    device: torch.device,
    progress: tqdm | None,
) -> torch.Tensor:
    """Call ``run(batch)`` for each token-budget batch of indices; return its rows gathered in input order.

    ``run`` returns one row per index of its batch. The progress bar, if any, advances per batch and is closed.
    """
    out: torch.Tensor | None = None
    for batch in token_budget_batches(lengths, batch_tokens, max_padding=max_padding):
        rows = run(batch)
        if out is None:
            out = torch.empty((len(lengths), rows.shape[1]), dtype=rows.dtype, device=device)
        out[torch.as_tensor(batch, device=device)] = rows
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.close()
    assert out is not None, "run_in_batches needs at least one sequence"
    return out
