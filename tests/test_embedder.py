"""Qwen3Embedder against independent references: the model card's transformers code and sentence-transformers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cpu_kinds import AVX2_ONLY
from policies import POLICIES
from qwen3_retrieval import DEFAULT_INSTRUCTION, Qwen3Embedder
from qwen3_retrieval.loading import cached_keys
from texts import DOCUMENTS, QUERIES

TOL = 1e-5


def model_card_embeddings(
    path: Path, texts: list[str], max_length: int = 8192, dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """The model card's recipe, written out independently: left padding, last-token pool, L2 normalise."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModel.from_pretrained(path, dtype=dtype).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"]
    if bool((mask[:, -1] == 1).all()):
        pooled = hidden[:, -1]
    else:
        pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).numpy()


def card_query(query: str, task: str = DEFAULT_INSTRUCTION) -> str:
    return f"Instruct: {task}\nQuery:{query}"


@pytest.fixture(scope="module")
def embedder(embedding_path: Path) -> Qwen3Embedder:
    return Qwen3Embedder(embedding_path, device="cpu")


@pytest.fixture(scope="module")
def st_model(embedding_path: Path):  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedding_path), device="cpu", local_files_only=True)
    model.max_seq_length = 8192
    return model


@pytest.mark.parametrize("policy", POLICIES)
def test_documents_equal_sentence_transformers(embedding_path: Path, st_model, policy: str) -> None:  # type: ignore[no-untyped-def]
    embedder = Qwen3Embedder(embedding_path, device="cpu", batch_policy=POLICIES[policy])
    ours = embedder.embed_documents(DOCUMENTS + DOCUMENTS[:3])[: len(DOCUMENTS)]
    reference = st_model.encode(DOCUMENTS, batch_size=4, convert_to_numpy=True)
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=TOL)


def test_queries_equal_sentence_transformers_query_prompt(embedder: Qwen3Embedder, st_model) -> None:  # type: ignore[no-untyped-def]
    ours = embedder.embed_queries(QUERIES)
    reference = st_model.encode(QUERIES, prompt_name="query", convert_to_numpy=True)
    np.testing.assert_allclose(ours, reference, atol=TOL)


def test_equal_model_card_code_with_custom_instruction(embedder: Qwen3Embedder, embedding_path: Path) -> None:
    task = "Given a question, retrieve passages that answer it"
    ours = embedder.embed_queries(QUERIES, instruction=task)
    reference = model_card_embeddings(embedding_path, [card_query(q, task) for q in QUERIES])
    np.testing.assert_allclose(ours, reference, atol=TOL)
    # The comparison is sharp enough to catch prompt mistakes: a space after "Query:" (as in the TEI example)
    # or a missing instruction move the vectors far beyond the tolerance.
    spaced = model_card_embeddings(embedding_path, [f"Instruct: {task}\nQuery: {q}" for q in QUERIES])
    bare = model_card_embeddings(embedding_path, QUERIES)
    assert np.abs(ours - spaced).max() > 100 * TOL
    assert np.abs(ours - bare).max() > 100 * TOL


def test_bfloat16_agrees_with_the_model_card_code_in_bfloat16(embedding_path: Path) -> None:
    # No exact reference exists in bfloat16 (every rounding order differs), so this holds ours to transformers'
    # own bfloat16 forward by the angle between vectors, as the benchmark reports bfloat16's fidelity.
    ours = Qwen3Embedder(embedding_path, device="cpu", dtype="bfloat16").embed_documents(DOCUMENTS)
    reference = model_card_embeddings(embedding_path, DOCUMENTS, dtype=torch.bfloat16)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() > 0.999, cosines


def test_pooling_is_at_the_eos_not_a_pad_or_other_token(embedder: Qwen3Embedder, embedding_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedding_path)
    model = AutoModel.from_pretrained(embedding_path).eval()
    ours = embedder.embed_documents(DOCUMENTS[:2])
    with torch.no_grad():
        for row, text in enumerate(DOCUMENTS[:2]):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            assert ids[0, -1].item() == tokenizer.convert_tokens_to_ids("<|endoftext|>")
            hidden = model(input_ids=ids).last_hidden_state[0]
            at_eos = torch.nn.functional.normalize(hidden[-1], dim=0).numpy()
            before_eos = torch.nn.functional.normalize(hidden[-2], dim=0).numpy()
            np.testing.assert_allclose(ours[row], at_eos, atol=TOL)
            assert np.abs(ours[row] - before_eos).max() > 100 * TOL


@pytest.mark.parametrize("policy", POLICIES)
def test_batched_equals_one_by_one(embedding_path: Path, policy: str) -> None:
    big = Qwen3Embedder(embedding_path, device="cpu", batch_policy=POLICIES[policy])
    small = Qwen3Embedder(embedding_path, device="cpu", batch_tokens=1)
    together = big.embed_documents(DOCUMENTS)
    singles = np.stack([small.embed_documents([d])[0] for d in DOCUMENTS])
    np.testing.assert_allclose(together, singles, atol=TOL)
    np.testing.assert_allclose(small.embed_documents(DOCUMENTS), singles, atol=TOL)


def test_both_tokenizer_variants_give_identical_vectors(checkpoints: dict[str, Path]) -> None:
    with_eos = Qwen3Embedder(checkpoints["embedding"], device="cpu", max_length=24)
    without_eos = Qwen3Embedder(checkpoints["embedding-no-eos"], device="cpu", max_length=24)
    np.testing.assert_allclose(with_eos.embed_documents(DOCUMENTS), without_eos.embed_documents(DOCUMENTS), atol=TOL)
    np.testing.assert_allclose(with_eos.embed_queries(QUERIES), without_eos.embed_queries(QUERIES), atol=TOL)


def test_truncation_keeps_exactly_one_eos(checkpoints: dict[str, Path]) -> None:
    for name in ("embedding", "embedding-no-eos"):
        embedder = Qwen3Embedder(checkpoints[name], device="cpu", max_length=8)
        ids = embedder.processor.documents([DOCUMENTS[-1], "short", ""])
        eos = embedder.processor.eos_id
        assert len(ids[0]) == 8
        for seq in ids:
            assert seq[-1] == eos
            assert seq.count(eos) == 1


def test_truncated_equals_model_card_code(embedding_path: Path) -> None:
    embedder = Qwen3Embedder(embedding_path, device="cpu", max_length=16)
    reference = model_card_embeddings(embedding_path, DOCUMENTS, max_length=16)
    np.testing.assert_allclose(embedder.embed_documents(DOCUMENTS), reference, atol=TOL)


def test_matryoshka_is_truncate_then_normalise(embedding_path: Path, embedder: Qwen3Embedder) -> None:
    full = embedder.embed_documents(DOCUMENTS[:4])
    cut = Qwen3Embedder(embedding_path, device="cpu", dimensions=32).embed_documents(DOCUMENTS[:4])
    expected = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    assert cut.shape == (4, 32)
    np.testing.assert_allclose(cut, expected, atol=TOL)


def test_unnormalised_output_is_the_raw_pooled_state(embedding_path: Path, embedder: Qwen3Embedder) -> None:
    raw = Qwen3Embedder(embedding_path, device="cpu", normalize=False).embed_documents(DOCUMENTS[:3])
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), embedder.embed_documents(DOCUMENTS[:3]), atol=TOL
    )
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_embed_query_is_one_row_of_embed_queries(embedder: Qwen3Embedder) -> None:
    one = embedder.embed_query(QUERIES[0])
    assert one.shape == (embedder.dimension,)
    np.testing.assert_allclose(one, embedder.embed_queries(QUERIES[:1])[0], atol=TOL)
    np.testing.assert_allclose(embedder.embed_query("x", instruction=""), embedder.embed_documents(["x"])[0], atol=TOL)


# --- bad input ---------------------------------------------------------------------------------------------


def test_empty_list_returns_empty_without_loading(embedding_path: Path) -> None:
    embedder = Qwen3Embedder(embedding_path, device="cpu", attn_implementation="eager")
    assert embedder.embed_documents([]).shape == (0, 0)
    assert embedder.embed_queries([]).shape == (0, 0)
    assert embedder.loaded is None
    assert embedder.cache_key not in cached_keys()


def test_non_string_item_names_its_index(embedder: Qwen3Embedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[2\] is a int"):
        embedder.embed_documents(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"texts\[0\] is a NoneType"):
        embedder.embed_queries([None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single str"):
        embedder.embed_documents("a bare string")


@pytest.mark.parametrize("dimensions", [0, 16, 31])
def test_too_small_dimensions_rejected_at_construction(embedding_path: Path, dimensions: int) -> None:
    with pytest.raises(ValueError, match="dimensions must be at least 32"):
        Qwen3Embedder(embedding_path, dimensions=dimensions)


def test_too_large_dimensions_name_the_valid_range(embedding_path: Path) -> None:
    embedder = Qwen3Embedder(embedding_path, device="cpu", dimensions=4096)
    with pytest.raises(ValueError, match="from 32 to 64"):
        embedder.embed_documents(["x"])


@pytest.mark.parametrize("device", ["tpu", "cuda:0", "nonsense:3"])
def test_unknown_or_missing_device(embedding_path: Path, device: str) -> None:
    with pytest.raises(ValueError, match="cpu"):
        Qwen3Embedder(embedding_path, device=device)


@pytest.mark.parametrize("dtype", ["int8", "float64", torch.int32])
def test_unknown_dtype_names_valid_values(embedding_path: Path, dtype: object) -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        Qwen3Embedder(embedding_path, dtype=dtype)  # type: ignore[arg-type]


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Qwen3Embedder(tmp_path / "no-such-model")


def test_unknown_hub_id_offline_says_how_to_fix() -> None:
    embedder = Qwen3Embedder("nobody-here/not-a-model", device="cpu")  # constructing reads nothing
    with pytest.raises(ValueError, match=r"not-a-model.*HF_HUB_OFFLINE"):
        embedder.embed_documents(["x"])


def test_constructing_reads_no_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    embedder = Qwen3Embedder(empty, device="cpu")  # nothing there to read, and nothing is read
    assert embedder.loaded is None
    with pytest.raises(ValueError, match="could not load model"):
        embedder.embed_documents(["now it loads"])


def test_objects_share_one_load_even_from_threads(embedding_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    calls: list[str] = []
    original = transformers.AutoModel.from_pretrained

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", counting)
    embedders = [Qwen3Embedder(embedding_path, device="cpu", attn_implementation="sdpa") for _ in range(4)]
    results: list[np.ndarray] = [np.empty(0)] * 4

    def work(i: int) -> None:
        results[i] = embedders[i].embed_documents(DOCUMENTS[:3])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(e.loaded is embedders[0].loaded for e in embedders)
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=TOL)


# On an AVX2-only CPU the packed float32 linear layers run oneDNN's AVX2 kernels, which the in-process tests on
# an AVX-512 machine never reach.
_AVX2_CHECK = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[2])
from test_embedder import model_card_embeddings, card_query
from texts import DOCUMENTS, QUERIES
from qwen3_retrieval import Qwen3Embedder
from qwen3_retrieval.kernels.fused import onednn_linears_available
embedder = Qwen3Embedder(sys.argv[1], device="cpu")
texts = DOCUMENTS * 30  # batches of hundreds of rows: the chunked, padded oneDNN calls
ours = np.concatenate([embedder.embed_documents(texts), embedder.embed_queries(QUERIES)])
queries = [card_query(q) for q in QUERIES]
reference = np.concatenate([model_card_embeddings(sys.argv[1], texts), model_card_embeddings(sys.argv[1], queries)])
print(torch.backends.cpu.get_cpu_capability(), onednn_linears_available(), float(np.abs(ours - reference).max()))
"""


def test_an_avx2_only_cpu_gives_the_model_card_vectors(embedding_path: Path) -> None:
    env = {**os.environ, **AVX2_ONLY}
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", _AVX2_CHECK, str(embedding_path), tests], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    capability, packed, difference = done.stdout.split()
    assert capability == "AVX2"
    assert packed == str(platform.machine().lower() in ("x86_64", "amd64"))  # the fast path is what ran
    assert float(difference) < TOL, difference
