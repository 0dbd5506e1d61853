"""The ``compile=`` option: compiled regions built in the background, switched to atomically, cached on disk.

The reference suites (test_embedder, test_reranker, test_long_input...) run compiled: conftest.py compiles the
tiny checkpoints' regions before the run, so their models start compiled. Here: the option's checks, the switch
from eager to compiled under concurrent callers, a second process starting from the cache, and no compiler.
"""

from __future__ import annotations

import contextlib
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
    """Callers running while the compile lands each get one path's vectors for a whole call, never a mix.

    Compiled and eager float32 agree to about 1e-7, too close to tell apart, so the compiled MLP region is loaded
    here with its output scaled by 1.01: its vectors are then far from eager ones, and a call (several batches,
    ``batch_tokens=64``) that switched paths between its batches, or a pass that did between layers, would match
    neither.
    """
    monkeypatch.setenv(CACHE_ENV, str(fresh_cache))  # empty: this model must compile in the background
    load = torch._inductor.aoti_load_package

    def marked(path: str) -> object:
        package = load(path)
        return (lambda *args: package(*args) * 1.01) if path.endswith("silu_mul.pt2") else package

    monkeypatch.setattr(torch._inductor, "aoti_load_package", marked)
    model = Qwen3Embedder(embedding_path, device="cpu", compile=True, batch_tokens=64, max_length=64)
    eager = Qwen3Embedder(embedding_path, device="cpu", compile=False, max_length=64).embed_documents(DOCUMENTS)
    calls: list[tuple[bool, np.ndarray]] = []
    done = threading.Event()

    def caller() -> None:
        while not done.is_set() or sum(was for was, _ in calls) < 8:
            was = model.compiled
            calls.append((was, model.embed_documents(DOCUMENTS)))
            time.sleep(0.02)  # idle moments: the compile runs at the lowest priority, on cores callers leave

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert model.wait_compiled(timeout=600)
    done.set()
    for thread in threads:
        thread.join()
    marked_compiled = model.embed_documents(DOCUMENTS)
    assert not np.allclose(marked_compiled, eager, atol=1e-3)  # the two paths are told apart
    paths = []
    for was, got in calls:
        rows_eager = np.isclose(got, eager, atol=1e-5).all(axis=1)
        rows_compiled = np.isclose(got, marked_compiled, atol=1e-5).all(axis=1)
        assert (rows_eager | rows_compiled).all()  # every vector from one path, through every layer
        assert rows_eager.all() or rows_compiled.all()  # every call on one path, through every batch
        assert not (was and rows_eager.all())  # once compiled, never eager again
        paths.append("compiled" if rows_compiled.all() else "eager")
    assert "eager" in paths and paths.count("compiled") >= 8  # both ran, while other calls were in flight
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


def test_the_cache_key_names_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor builds for this very CPU (-march=native): AMX and the CPU's own flags are in the key."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    amx = torch.cpu._is_amx_tile_supported() and capability.startswith("avx512")  # torch's own check
    assert compiled.instruction_set() == (f"{capability}-amx" if amx else capability)
    sizes = {"head_dim": 16, "hidden": 64, "intermediate": 128}
    here = compiled.RegionSwitch(torch.float32, 1e-6, sizes, compiled=False).folder
    monkeypatch.setattr(compiled, "cpu_fingerprint", lambda: "another-cpu")
    assert compiled.RegionSwitch(torch.float32, 1e-6, sizes, compiled=False).folder != here


ENDS_WHEN_TOLD = """
import os, sys
from qwen3_retrieval import Qwen3Embedder
model = Qwen3Embedder(sys.argv[1], device="cpu", compile=True, max_length=64)
model.embed_documents(["a first call runs eager while the compile runs"])
sys.stdin.readline()
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
"""


def running_with(text: str) -> list[int]:
    """The processes with ``text`` on their command line (Linux's /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as command:
            if text.encode() in command.read():
                found.append(int(pid))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the compiler's processes in /proc")
@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_a_program_that_ends_during_its_compile_leaves_no_files_or_processes(
    embedding_path: Path, tmp_path: Path, ending: str
) -> None:
    """Exiting while inductor's C++ compiler runs, the program stops the compile's whole process group and
    removes its scratch. Killed with the compile (SIGKILL to both: nothing of theirs runs), the scratch stays
    until the next compile on this machine. The cache holds whole packages or none."""
    cache = tmp_path / "cache"
    root = cache / "compiled"
    env = {**os.environ, CACHE_ENV: str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # inductor's build files go to the compile's scratch folder
    script = [sys.executable, "-c", ENDS_WHEN_TOLD, str(embedding_path), ending]
    program = subprocess.Popen(script, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (scratch := [p.name for p in root.glob(".compiling-*")]) or not running_with(scratch[0]):
        assert time.monotonic() < deadline and program.poll() is None, "no C++ compiler started"
        time.sleep(0.02)
    _, errors = program.communicate("now\n", timeout=60)  # the compiler (its command names the scratch) runs
    assert program.returncode == (0 if ending == "exit" else -9), errors
    group = int(scratch[0].rsplit("-", 1)[1])  # .compiling-HOST-PID: the compile's own session

    def group_alive() -> bool:  # a process of the group that is not a zombie waiting for init to reap it
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
                state, _, group_id = stat.read().rsplit(")", 1)[1].split()[:3]
                if int(group_id) == group and state != "Z":
                    return True
        return False

    if ending == "exit":
        time.sleep(0.3)  # a moment for SIGKILL; a compiler process that was let run would run on for seconds
        assert not group_alive() and not running_with(scratch[0])  # nothing outlives the program
    else:
        os.killpg(group, 9)
        deadline = time.monotonic() + 30  # until the orphans, killed, are gone
        while group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive()
        assert [p.name for p in root.iterdir() if p.name.startswith(".compiling-")]  # left behind, for now
        compiled.remove_abandoned_scratch(root)  # what the next compile (compile_into) does first
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no scratch left
    for key in root.iterdir():
        for package in key.iterdir():  # each whole: it loads
            assert package.name in {"add_norm.pt2", "norm_rotary.pt2", "silu_mul.pt2"}
            torch._inductor.aoti_load_package(str(package))


def test_compile_true_equals_sentence_transformers_on_every_cpu(embedding_path: Path) -> None:
    """``compile=True`` runs compiled wherever a compiler is found, also where ``"auto"`` leaves float32 eager
    (AVX2 kernels), so the compiled path is checked against an independent reference on every CPU kind."""
    if not compiled.compiler_available():
        pytest.skip("no C++ compiler: compile=True runs eager (test_no_compiler_runs_eager_and_says_so_once)")
    from sentence_transformers import SentenceTransformer

    model = Qwen3Embedder(embedding_path, device="cpu", compile=True)
    assert model.wait_compiled(timeout=600)
    reference = SentenceTransformer(str(embedding_path), device="cpu", local_files_only=True)
    reference.max_seq_length = 8192
    expected = reference.encode(DOCUMENTS, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(np.asarray(model.embed_documents(DOCUMENTS)) - expected).max() < 1e-5
