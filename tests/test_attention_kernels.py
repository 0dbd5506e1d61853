"""Packed attention's kernels: which one runs where, and both exact on a CPU.

The GPU kernel (torch's FlashAttention ``varlen_attn``) cannot run on a CPU; these tests run its argument
building through ``qwen3_retrieval.testing.reference_varlen_attention`` (what FlashAttention computes, written out
densely), and compare with references computed independently: per-sequence attention written out here,
transformers' own model and the model card's reranker formula, at 1e-5 in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from qwen3_retrieval.devices import resolve_dtype
from qwen3_retrieval.kernels import packed_attention
from qwen3_retrieval.kernels.packed_attention import (
    ATTENTION_ROWS,
    Packing,
    Run,
    VarlenOffsets,
    attend,
    choose_kernel,
    choose_row_multiple,
    kernel_for,
    varlen_offsets,
)
from qwen3_retrieval.testing import reference_packed_attention, reference_varlen_attention
from test_embedder import model_card_embeddings
from test_reranker import ModelCard, card_body
from texts import DOCUMENTS

TOL = 1e-5
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize(
    ("device", "dtype", "has_varlen", "capability", "expected"),
    [
        ("cuda", BF16, True, (9, 0), "varlen"),  # H100
        ("cuda", BF16, True, (8, 0), "varlen"),  # A100
        ("cuda", FP16, True, (8, 9), "varlen"),
        ("cuda", FP32, True, (9, 0), "sdpa"),  # FlashAttention has no float32 kernel
        ("cuda", BF16, False, (9, 0), "sdpa"),  # a torch without varlen_attn
        ("cuda", FP16, True, (7, 5), "sdpa"),  # torch builds FlashAttention for sm80 on
        ("cuda", BF16, True, None, "sdpa"),
        ("cpu", BF16, True, None, "sdpa"),
        ("cpu", FP32, True, None, "sdpa"),
        ("mps", BF16, True, None, "sdpa"),
    ],
)
def test_kernel_choice(device: str, dtype: torch.dtype, has_varlen: bool, capability: object, expected: str) -> None:
    assert choose_kernel(device, dtype, has_varlen=has_varlen, capability=capability) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_this_cpu_runs_the_sdpa_loop(dtype: torch.dtype) -> None:
    assert kernel_for(torch.device("cpu"), dtype) == "sdpa"


@pytest.mark.parametrize(
    ("device", "dtype", "amx", "expected"),
    [
        ("cpu", BF16, True, ATTENTION_ROWS),  # AMX: lengths of a multiple of 32 run far faster
        ("cpu", BF16, False, 1),  # AVX-512 or AVX2 alone: padding measured no faster
        ("cpu", FP32, True, 1),  # float32 measured no faster padded
        ("cpu", FP16, True, 1),
        ("cuda", BF16, True, 1),
    ],
)
def test_row_multiple_choice(device: str, dtype: torch.dtype, amx: bool, expected: int) -> None:
    assert choose_row_multiple(device, dtype, amx=amx) == expected


@pytest.fixture
def padded_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The SDPA loop pads runs as bfloat16 does on a CPU with AMX, here in float32; yields the query row counts
    SDPA saw (and checks the padding rule was asked)."""
    asked, seen = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def padding(device: torch.device, dtype: torch.dtype) -> int:
        asked.append(1)
        return ATTENTION_ROWS

    def spied(query: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(query.shape[2])
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(packed_attention, "row_multiple_for", padding)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spied)
    yield seen
    assert asked, "the SDPA loop never asked for its row multiple"


def test_bfloat16_is_the_default_on_gpus_with_it_and_an_explicit_dtype_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(None, cuda) == BF16 and resolve_dtype("auto", cuda) == BF16
    assert resolve_dtype("float32", cuda) == FP32 and resolve_dtype(FP16, cuda) == FP16
    assert resolve_dtype(None, torch.device("cpu")) == FP32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(None, cuda) == FP32


# Three prefixes (one absent), runs of equal lengths: (length, count, prefix index).
LAYOUT = [(5, 2, 0), (3, 1, 0), (4, 3, 1), (2, 2, 2), (1, 1, 1)]
PREFIX_LENGTHS = [3, 0, 6]


def _runs() -> list[Run]:
    runs, first = [], 0
    for length, count, prefix in LAYOUT:
        runs.append(Run(first, length, count, prefix))
        first += length * count
    return runs


def test_varlen_offsets_equal_an_independent_count() -> None:
    offsets = varlen_offsets(_runs(), PREFIX_LENGTHS, torch.device("cpu"))
    sequences = [(length, prefix) for length, count, prefix in LAYOUT for _ in range(count)]
    q_ends, k_ends, total_q, total_k = [0], [0], 0, 0
    for length, prefix in sequences:
        total_q, total_k = total_q + length, total_k + PREFIX_LENGTHS[prefix] + length
        q_ends.append(total_q)
        k_ends.append(total_k)
    assert offsets.cu_seq_q.dtype == offsets.cu_seq_k.dtype == torch.int32
    assert offsets.cu_seq_q.tolist() == q_ends and offsets.cu_seq_k.tolist() == k_ends
    assert offsets.max_q == 5 and offsets.max_k == 8  # 5 tokens after 3 of prefix 0, 2 after 6 of prefix 2
    # The joined keys: each sequence's prefix rows (prefixes stacked in order, the packed row after them), then
    # its own rows.
    assert offsets.gather is not None
    prefix_start = {0: 0, 1: 3, 2: 3}
    own, expected = sum(PREFIX_LENGTHS), []
    for length, prefix in sequences:
        expected += list(range(prefix_start[prefix], prefix_start[prefix] + PREFIX_LENGTHS[prefix]))
        expected += list(range(own, own + length))
        own += length
    assert offsets.gather.tolist() == expected
    assert offsets.cu_seq_last.dtype == torch.int32 and offsets.cu_seq_last.tolist() == list(range(len(sequences) + 1))
    assert varlen_offsets(_runs(), [0, 0, 0], torch.device("cpu")).gather is None


@pytest.mark.parametrize("kernel", ["sdpa", "varlen", "sdpa padded"])
def test_both_kernels_equal_per_sequence_attention(
    kernel: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setattr(packed_attention, "varlen_call", lambda: reference_varlen_attention)
    seen = request.getfixturevalue("padded_rows") if kernel == "sdpa padded" else []
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, layers = 4, 2, 8, 2
    runs = _runs()
    tokens = sum(run.length * run.sequences for run in runs)
    q = torch.randn(tokens, heads, dim, generator=generator)
    k, v = (torch.randn(tokens, kv_heads, dim, generator=generator) for _ in range(2))
    prefixes: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [
        [
            (
                torch.randn(1, kv_heads, n, dim, generator=generator),
                torch.randn(1, kv_heads, n, dim, generator=generator),
            )
            for _ in range(layers)
        ]
        if n
        else None
        for n in PREFIX_LENGTHS
    ]
    varlen = varlen_offsets(runs, PREFIX_LENGTHS, torch.device("cpu")) if kernel == "varlen" else None
    scale = dim**-0.5 * 1.5  # not the default: the scale must reach the kernel
    packing = Packing(runs, prefixes, varlen)
    expected = reference_packed_attention(q, k, v, runs, prefixes, 1, scale)
    assert torch.allclose(attend(1, q, k, v, packing, scale).double(), expected, atol=TOL)
    if kernel == "sdpa padded":  # the runs without a prefix (index 1) went padded; those with one as they are
        assert seen == [length if PREFIX_LENGTHS[prefix] else ATTENTION_ROWS for length, _, prefix in LAYOUT]
    # Only each sequence's last token querying (the written-out decoder's last layer): its rows of the above.
    last = [run.first + (s + 1) * run.length - 1 for run in runs for s in range(run.sequences)]
    out = attend(1, q[last], k, v, packing, scale, last_only=True)
    assert torch.allclose(out.double(), expected[last], atol=TOL)


@pytest.fixture
def varlen_on_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Models run their packed attention through the ``"varlen"`` kernel, on the CPU stand-in (and do call it)."""
    calls = []

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return reference_varlen_attention(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "varlen_call", lambda: counted)
    monkeypatch.setattr(packed_attention, "kernel_for", lambda device, dtype: "varlen")
    yield
    assert calls, "the varlen kernel never ran"


@pytest.mark.parametrize("kernel", ["sdpa", "varlen", "sdpa padded"])
def test_embeddings_equal_transformers_model(kernel: str, embedding_path: Path, request: pytest.FixtureRequest) -> None:
    if kernel != "sdpa":
        request.getfixturevalue({"varlen": "varlen_on_cpu", "sdpa padded": "padded_rows"}[kernel])
    texts = DOCUMENTS[:6]
    embedder = Qwen3Embedder(embedding_path, device="cpu", batch_tokens=64)  # several batches, mixed lengths
    ours = np.asarray(embedder.embed_documents(texts))
    np.testing.assert_allclose(ours, model_card_embeddings(embedding_path, texts), atol=TOL)


@pytest.mark.parametrize("kernel", ["sdpa", "varlen"])
def test_shared_prefix_scores_equal_model_card(
    kernel: str, reranker_path: Path, request: pytest.FixtureRequest
) -> None:
    if kernel == "varlen":
        request.getfixturevalue("varlen_on_cpu")
    from qwen3_retrieval import DEFAULT_INSTRUCTION

    query, documents = "what is the capital city", DOCUMENTS[:6]
    ours = Qwen3Reranker(reranker_path, device="cpu", batch_tokens=160).score(query, documents)
    reference = ModelCard(reranker_path).scores([card_body(DEFAULT_INSTRUCTION, query, d) for d in documents])
    assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) < TOL, (ours, reference)


def _fake_varlen_210(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):  # type: ignore[no-untyped-def]
    assert is_causal is True and return_aux is None
    return reference_varlen_attention(
        q, k, v, VarlenOffsets(cu_q, cu_k, max_q, max_k, None, cu_q), None, gqa=k.shape[1] != q.shape[1]
    )


def _fake_varlen_211(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):  # type: ignore[no-untyped-def]
    assert window_size == (-1, 0)
    return reference_varlen_attention(
        q, k, v, VarlenOffsets(cu_q, cu_k, max_q, max_k, None, cu_q), scale, gqa=k.shape[1] != q.shape[1]
    )


def _fake_varlen_212(  # type: ignore[no-untyped-def]
    q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), enable_gqa=False
):
    assert window_size == (-1, 0)
    if k.shape[1] != q.shape[1] and not enable_gqa:
        raise ValueError("Try setting enable_gqa=True for GQA.")  # what torch 2.12 on raise
    return reference_varlen_attention(
        q, k, v, VarlenOffsets(cu_q, cu_k, max_q, max_k, None, cu_q), scale, gqa=enable_gqa
    )


@pytest.mark.parametrize("fake", [_fake_varlen_210, _fake_varlen_211, _fake_varlen_212])
def test_each_torch_release_gets_its_own_varlen_keywords(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.attention.varlen

    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", fake)
    packed_attention.varlen_call.cache_clear()
    try:
        call = packed_attention.varlen_call()
        assert call is not None
        generator = torch.Generator().manual_seed(1)
        q = torch.randn(7, 4, 8, generator=generator)
        k, v = (torch.randn(7, 2, 8, generator=generator) for _ in range(2))
        offsets = torch.tensor([0, 3, 7], dtype=torch.int32)
        scale = 0.3  # not 1/sqrt(8): a release without ``scale`` gets it folded into the queries
        out = call(q, k, v, VarlenOffsets(offsets, offsets, 4, 4, None, offsets), scale, gqa=True)
        expected = reference_packed_attention(q, k, v, [Run(0, 3, 1, 0), Run(3, 4, 1, 0)], [None], 0, scale)
        assert torch.allclose(out.double(), expected, atol=TOL)
    finally:
        packed_attention.varlen_call.cache_clear()


def test_offsets_are_built_once_per_forward_pass_for_every_layer(
    embedding_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bfloat16 runs transformers' own layers (as on a GPU), each attending through the varlen kernel.
    builds, calls = [], []
    build = packed_attention.varlen_offsets

    def counted_build(*args: Any, **kwargs: Any) -> VarlenOffsets:
        builds.append(1)
        return build(*args, **kwargs)

    def counted_call(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return reference_varlen_attention(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "varlen_offsets", counted_build)
    monkeypatch.setattr(packed_attention, "varlen_call", lambda: counted_call)
    monkeypatch.setattr(packed_attention, "kernel_for", lambda device, dtype: "varlen")
    embedder = Qwen3Embedder(embedding_path, device="cpu", dtype="bfloat16", batch_tokens=64)
    texts = DOCUMENTS[:6]
    ours = torch.tensor(embedder.embed_documents(texts))
    reference = torch.from_numpy(model_card_embeddings(embedding_path, texts, dtype=torch.bfloat16))
    assert float(torch.nn.functional.cosine_similarity(ours, reference).min()) > 0.999
    layers = 2  # the tiny checkpoint's
    assert len(builds) >= 2 and len(calls) == layers * len(builds), (len(builds), len(calls))
