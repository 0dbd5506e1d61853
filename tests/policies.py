"""Batching policies the tests run through: each must give the same numbers as the references."""

from __future__ import annotations

from qwen3_retrieval.devices import BatchPolicy

POLICIES = {
    # The GPU default: left padding hidden by an attention mask.
    "left-padded": BatchPolicy(batch_tokens=100_000, max_padding=1.0, padding_side="left"),
    # The CPU scheme with any amount of padding: right padding, no mask.
    "right-padded": BatchPolicy(batch_tokens=100_000, max_padding=1.0, padding_side="right"),
    # No padding at all: one length per batch.
    "one-length": BatchPolicy(batch_tokens=100_000, max_padding=0.0, padding_side="right"),
}
