"""Length-sorted batches bounded by a token budget."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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


def in_input_order(
    lengths: Sequence[int], batch_tokens: int, *, pad: bool, device: torch.device, progress: tqdm | None
) -> Iterator[tuple[list[int], _Slot]]:
    """Yield ``(batch, slot)`` for each token-budget batch; ``slot.put(rows)`` stores its results in input order.

    The caller reads the gathered tensor from ``slot.result`` after the loop. The progress bar, if any, advances
    per batch and is closed at the end.
    """
    slot = _Slot(len(lengths), device)
    for batch in token_budget_batches(lengths, batch_tokens, pad=pad):
        slot.batch = batch
        yield batch, slot
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.close()


class _Slot:
    """Where the batches of :func:`in_input_order` put their rows."""

    def __init__(self, total: int, device: torch.device) -> None:
        self.total, self.device = total, device
        self.batch: list[int] = []
        self._out: torch.Tensor | None = None

    def put(self, rows: torch.Tensor) -> None:
        if self._out is None:
            self._out = torch.empty((self.total, rows.shape[1]), dtype=rows.dtype, device=self.device)
        self._out[torch.as_tensor(self.batch, device=self.device)] = rows

    @property
    def result(self) -> torch.Tensor:
        assert self._out is not None, "no batch was run"
        return self._out
