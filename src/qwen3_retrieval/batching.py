"""Length-sorted batches bounded by a token budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, *, pad: bool = True) -> list[list[int]]:
    """Group sequence indices into batches whose padded size (rows x longest) stays within ``batch_tokens``.

    Longest sequences come first, so a budget that does not fit in memory fails on the first batch, and
    sequences of similar length share a batch, so little compute is spent on padding. A sequence longer than
    the budget gets a batch of its own. With ``pad=False`` a batch only holds sequences of one length: nothing
    is padded, so the model can skip the attention mask and use its fastest causal kernel.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the first row of the batch sets its padded width.
        full = (len(current) + 1) * lengths[current[0]] > batch_tokens if current else False
        if current and (full or (not pad and lengths[index] != lengths[current[0]])):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def run_in_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    run: Callable[[list[int]], torch.Tensor],
    *,
    pad: bool,
    device: torch.device,
    progress: tqdm | None,
) -> torch.Tensor:
    """Call ``run(batch)`` for each token-budget batch of indices; return its rows gathered in input order.

    ``run`` returns one row per index of its batch. The progress bar, if any, advances per batch and is closed.
    """
    out: torch.Tensor | None = None
    for batch in token_budget_batches(lengths, batch_tokens, pad=pad):
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
