"""The ``compile=`` option: compiled regions built in the background, switched to atomically, cached on disk.

The reference suites (test_embedder, test_reranker, test_long_input...) run compiled: conftest.py compiles the
tiny checkpoints' regions before the run, so their models start compiled. Here: the option's checks, the switch
from eager to compiled under concurrent callers, a second process starting from the cache, and no compiler.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from qwen3_retrieval.kernels import compiled
from texts import DOCUMENTS

CACHE_ENV = "QWEN3_RETRIEVAL_CACHE"


@pytest.mark.parametrize("value", ["auto", True, False])
def test_compile_accepts_auto_true_false(embedding_path: Path, value: object) -> None:
    assert Qwen3Embedder(embedding_path, device="cpu", compile=value).options.compile == value


@pytest.mark.parametrize(("value", "error"), [("yes", ValueError), ("", ValueError), (1, TypeError), (None, TypeError)])
def test_compile_rejects_other_values(embedding_path: Path, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="compile must be 'auto', True or False"):
        Qwen3Embedder(embedding_path, compile=value)


@pytest.mark.skipif(
    not compiled.resolve("auto", torch.float32, torch.device("cpu")),
    reason="compile='auto' leaves float32 eager here (no C++ compiler, or AVX2 kernels: no measured gain)",
)
def test_the_reference_suites_run_compiled(embedding_path: Path, reranker_path: Path) -> None:
    """conftest.py's compile makes the default ("auto") models of the suites run compiled from their first call."""
    embedder, reranker = Qwen3Embedder(embedding_path, device="cpu"), Qwen3Reranker(reranker_path, device="cpu")
    embedder.embed_query("first")
    reranker.score("first", ["call"])
    assert embedder.compiled and reranker.compiled


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled-cache")


def test_switch_under_concurrent_callers(
    embedding_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers running while the compile lands all get the eager path's vectors (float32: equal to 1e-5)."""
    monkeypatch.setenv(CACHE_ENV, str(fresh_cache))  # empty: this model must compile in the background
    # batch_tokens=64: every call runs several batches, so a switch in the middle of a call would show.
    model = Qwen3Embedder(embedding_path, device="cpu", compile=True, batch_tokens=64, max_length=64)
    expected = Qwen3Embedder(embedding_path, device="cpu", compile=False, max_length=64).embed_documents(DOCUMENTS)
    before, after, failures = [], [], []
    done = threading.Event()

    def caller() -> None:
        while not done.is_set() or len(after) < 8:
            was = model.compiled
            got = model.embed_documents(DOCUMENTS)
            (after if was else before).append(got)
            if not np.allclose(got, expected, atol=1e-5):
                failures.append(float(np.abs(got - expected).max()))
            time.sleep(0.02)  # idle moments: the compile runs at the lowest priority, on cores callers leave

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert model.wait_compiled(timeout=600)
    done.set()
    for thread in threads:
        thread.join()
    assert not failures
    assert before and len(after) >= 8  # both paths ran, while other calls were in flight
    assert sorted(p.name for p in next(fresh_cache.glob("compiled/*")).iterdir()) == [
        "add_norm.pt2",
        "norm_rotary.pt2",
        "silu_mul.pt2",
    ]


def test_next_process_starts_compiled(embedding_path: Path, fresh_cache: Path) -> None:
    """A second process finds the cache of the test above and runs compiled from its first call, compiling nothing."""
    if not any(fresh_cache.glob("compiled/*/silu_mul.pt2")):
        pytest.skip("runs after test_switch_under_concurrent_callers, which fills the cache")
    script = (
        "import logging\n"
        "from qwen3_retrieval import Qwen3Embedder\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "logging.getLogger('qwen3_retrieval.kernels.compiled').setLevel(logging.DEBUG)\n"
        f"model = Qwen3Embedder({str(embedding_path)!r}, device='cpu', compile=True, max_length=64)\n"
        "model.embed_documents(['first'])\n"
        "print(model.compiled)\n"
    )
    env = {**os.environ, CACHE_ENV: str(fresh_cache)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True"]
    said = [line for line in out.stderr.splitlines() if line.startswith("qwen3_retrieval:")]
    assert len(said) == 1 and said[0].startswith("qwen3_retrieval: compiled regions loaded from"), out.stderr


def test_no_compiler_runs_eager_and_says_so_once(
    reranker_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(compiled, "_said_no_compiler", False)
    with caplog.at_level(logging.DEBUG, logger="qwen3_retrieval.kernels.compiled"):
        first = Qwen3Reranker(reranker_path, device="cpu", compile=True)
        second = Qwen3Reranker(reranker_path, device="cpu", compile=True, max_length=100)  # a second load
        scores = first.score("what is a cat?", DOCUMENTS[:3])
        second.score("what is a cat?", DOCUMENTS[:3])
        assert not first.wait_compiled(timeout=0) and not second.wait_compiled(timeout=0)
    said = [r for r in caplog.records if "no C++ compiler" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG
    assert not (tmp_path / "cache").exists()  # nothing compiled, nothing written
    eager = Qwen3Reranker(reranker_path, device="cpu", compile=False).score("what is a cat?", DOCUMENTS[:3])
    assert np.allclose(scores, eager, atol=1e-6)
