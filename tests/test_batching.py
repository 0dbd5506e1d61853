from __future__ import annotations

from qwen3_retrieval.batching import token_budget_batches
from qwen3_retrieval.devices import pads_batches


def test_padded_batches_respect_the_budget_longest_first() -> None:
    lengths = [5, 30, 10, 30, 7, 12]
    batches = token_budget_batches(lengths, 60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [1, 3]  # the two longest first: 2 x 30 = 60 fits, a third would not
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 60


def test_oversized_sequence_gets_its_own_batch() -> None:
    assert token_budget_batches([100, 3, 3], 10) == [[0], [1, 2]]


def test_pad_free_batches_hold_one_length_each() -> None:
    lengths = [4, 4, 9, 4, 9, 2]
    batches = token_budget_batches(lengths, 100, pad=False)
    assert batches == [[2, 4], [0, 1, 3], [5]]
    assert token_budget_batches([4, 4, 4], 8, pad=False) == [[0, 1], [2]]


def test_cpu_batches_are_pad_free() -> None:
    import torch

    assert pads_batches(torch.device("cpu")) is False
    assert pads_batches(torch.device("cuda")) is True
