from __future__ import annotations

from qwen3_retrieval.batching import default_policy, token_budget_batches


def test_padded_batches_respect_the_budget_longest_first() -> None:
    lengths = [5, 30, 10, 30, 7, 12]
    batches = token_budget_batches(lengths, 60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [1, 3]  # the two longest first: 2 x 30 = 60 fits, a third would not
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 60


def test_oversized_sequence_gets_its_own_batch() -> None:
    assert token_budget_batches([100, 3, 3], 10) == [[0], [1, 2]]


def test_no_padding_allowed_keeps_one_length_per_batch() -> None:
    lengths = [4, 4, 9, 4, 9, 2]
    batches = token_budget_batches(lengths, 100, max_padding=0.0)
    assert batches == [[2, 4], [0, 1, 3], [5]]
    assert token_budget_batches([4, 4, 4], 8, max_padding=0.0) == [[0, 1], [2]]


def test_padding_share_bounds_each_batch() -> None:
    lengths = [100, 95, 90, 60, 58, 10]
    batches = token_budget_batches(lengths, 10_000, max_padding=0.2)
    # 100, 95, 90 pad 15 of 300 (5%); adding 60 would pad 55 of 400 (14%), adding 58 then 97 of 500 (19%),
    # and 10 would pad 187 of 600 (31%), over the bound.
    assert batches == [[0, 1, 2, 3, 4], [5]]
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) * width - sum(lengths[i] for i in batch) <= 0.2 * len(batch) * width


def test_default_layout_is_packed_and_a_named_kernel_pads() -> None:
    import torch

    cpu, gpu = default_policy(torch.device("cpu")), default_policy(torch.device("cuda"))
    assert cpu.layout == gpu.layout == "packed"
    assert cpu.batch_tokens < gpu.batch_tokens
    padded_cpu = default_policy(torch.device("cpu"), packed=False)
    padded_gpu = default_policy(torch.device("cuda"), packed=False)
    assert padded_cpu.layout == "right" and padded_gpu.layout == "left"
    assert 0 < padded_cpu.max_padding < padded_gpu.max_padding == 1.0


def test_packed_batches_count_real_tokens_only() -> None:
    lengths = [10, 3, 7, 7, 2, 30]
    batches = token_budget_batches(lengths, 20, packed=True)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: alone
    assert all(sum(lengths[i] for i in batch) <= 20 for batch in batches[1:])
    assert [lengths[i] for i in batches[1]] == [10, 7]  # longest first, filled to the budget
