"""Padding and last-token pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``input_ids``, ``attention_mask`` and ``position_ids`` for left-padded ``sequences``.

    Positions count from 0 at each row's first real token, so a row's result does not depend on how much
    padding its batch needed (RoPE angles at large absolute positions are not exact in float32).
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, width - len(seq) :] = 1
    position_ids = (attention_mask.cumsum(1) - 1).clamp_(min=0)
    return input_ids, attention_mask, position_ids


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return right-padded ``input_ids`` and the index of each row's last real token."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return input_ids, torch.tensor([len(s) - 1 for s in sequences])


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return each row's hidden state at its last real token, for left or right padding.

    The position comes from the attention mask, never from token ids: Qwen3's pad token is the same
    ``<|endoftext|>`` the embedding pools on, so "last non-pad token" would pick the wrong one.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return take_positions(hidden, (attention_mask.to(positions.device) * positions).argmax(dim=1))


def take_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Return ``hidden[row, positions[row]]`` for every row: one state per sequence."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]
