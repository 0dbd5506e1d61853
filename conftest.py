"""Shared fixtures: small random-weight Qwen3 checkpoints built offline once per test session.

Everything a test run writes (pytest's temporary folders, the checkpoints, what subprocesses and libraries put in
the temporary folder) lands in one scratch folder, removed when the run ends: the tests leave nothing in /tmp.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_scratch: Path | None = None
COMPILED_CACHE_ENV = "QWEN3_RETRIEVAL_CACHE"


def pytest_configure(config: pytest.Config) -> None:
    global _scratch
    _configure_folders(config)
    if not hasattr(config, "workerinput"):
        _compile_tiny_regions()


def _compile_tiny_regions() -> None:
    """Compile the tiny checkpoints' regions once, before any test loads a model (see kernels/compiled.py).

    Every model the tests load then finds them in the cache and runs compiled from its first call, so the
    reference suites check the compiled path (``compile="auto"``, the default); ``compile=False`` tests check the
    eager one. Models of other shapes compile in the background as users' do, and run eager until then.
    """
    import torch

    from qwen3_retrieval.kernels import compiled
    from qwen3_retrieval.testing.checkpoints import SHAPES

    tiny = SHAPES["tiny"]
    sizes = {"head_dim": tiny["head_dim"], "hidden": tiny["hidden_size"], "intermediate": tiny["intermediate_size"]}
    cpu = torch.device("cpu")
    dtypes = [dtype for dtype in (torch.float32, torch.bfloat16) if compiled.resolve("auto", dtype, cpu)]
    switches = [compiled.RegionSwitch(dtype, 1e-6, sizes, compiled=True) for dtype in dtypes]  # compile at once
    for switch in switches:
        switch.wait()


def _configure_folders(config: pytest.Config) -> None:
    global _scratch
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its basetemp is inside the controller's scratch
        # Beside it, not in it: pytest empties a basetemp when a test first asks for a temporary folder.
        basetemp = Path(config.option.basetemp)
        temporary = basetemp.with_name(f"{basetemp.name}-tmp")
        temporary.mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = str(temporary)
        tempfile.tempdir = str(temporary)
        return
    if config.option.basetemp is not None:  # the user chose where pytest's folders go; keep out of the way
        os.environ.setdefault(COMPILED_CACHE_ENV, str(Path(config.option.basetemp).with_name("qwen3-compiled")))
        return
    _scratch = Path(tempfile.mkdtemp(prefix="qwen3-retrieval-tests-"))
    config.option.basetemp = str(_scratch / "pytest")
    temporary = _scratch / "tmp"
    temporary.mkdir()
    os.environ["TMPDIR"] = str(temporary)  # subprocesses (benchmark, probes, the command) write here too
    tempfile.tempdir = str(temporary)
    # Compiled regions: the run's own cache (workers and subprocesses inherit it), not the user's. The tiny
    # checkpoints' packages are kept in pytest's cache folder, so that the next run starts compiled instead of
    # compiling for a minute first (their key names torch, this CPU and the regions' code); other tests compile
    # into folders of their own. Inductor's build files are shared by the run's compiles and go with the run.
    cache = getattr(config, "cache", None)  # None with ``-p no:cacheprovider``
    kept = cache.mkdir("qwen3-retrieval-compiled") if cache is not None else _scratch / "compiled"
    os.environ[COMPILED_CACHE_ENV] = str(kept)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_scratch / "inductor")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _scratch is None:
        return
    try:  # Milvus Lite's servers write their files until they stop; stop them before the folder goes
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        pass
    else:
        server_manager_instance.release_all()
    shutil.rmtree(_scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    from qwen3_retrieval.testing import tiny_checkpoint

    kinds = ("embedding", "embedding-no-eos", "reranker", "reranker-seq-cls")
    return {kind: tiny_checkpoint(kind) for kind in kinds}  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def embedding_path(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["embedding"]


@pytest.fixture(scope="session")
def reranker_path(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["reranker"]


@pytest.fixture(scope="session")
def vl_embedding() -> Path:
    from qwen3_retrieval.testing import tiny_vl_checkpoint

    return tiny_vl_checkpoint("vl-embedding")


@pytest.fixture(scope="session")
def vl_reranker() -> Path:
    from qwen3_retrieval.testing import tiny_vl_checkpoint

    return tiny_vl_checkpoint("vl-reranker")


@pytest.fixture
def progress(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Print a line past pytest's capture, so a test that runs for minutes shows what it is doing."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(message: str) -> None:
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"    [{request.node.name}] {message}")

    return say
