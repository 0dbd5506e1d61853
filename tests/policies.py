"""Batching policies the tests run through: each must give the same numbers as the references."""

from __future__ import annotations

from qwen3_retrieval.batching import BatchPolicy

POLICIES = {
    # The default on every device: sequences end to end in one row, no padding.
    "packed": BatchPolicy(batch_tokens=100_000, max_padding=1.0, layout="packed"),
    # Packed with a small budget: many batches, sequences longer than the budget alone.
    "packed-small": BatchPolicy(batch_tokens=24, max_padding=1.0, layout="packed"),
    # A caller-named kernel on GPU: left padding hidden by an attention mask.
    "left-padded": BatchPolicy(batch_tokens=100_000, max_padding=1.0, layout="left"),
    # A caller-named kernel on CPU: right padding, no mask.
    "right-padded": BatchPolicy(batch_tokens=100_000, max_padding=1.0, layout="right"),
    # No padding at all: one length per batch.
    "one-length": BatchPolicy(batch_tokens=100_000, max_padding=0.0, layout="right"),
}
