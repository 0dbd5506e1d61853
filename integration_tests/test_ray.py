"""Bulk indexing on Ray: a local Ray cluster (2 CPUs, 127.0.0.1 only) reads, splits and embeds; the index it
leaves on a Milvus server is the one a single process builds, with the same mirror rules on the next runs.

The cluster is ``ray start --head --block``, started here and stopped by its own PID (SIGINT, which makes it
stop the processes it started). ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray on the loopback address:
otherwise it swaps 127.0.0.1 for this machine's network address.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MilvusServer, free_port, index_rows, same_index
from qwen3_retrieval.rag.on_ray import RayOptions
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

# Loopback only, no usage report, and no token (a test cluster on 127.0.0.1 that lives for this module). Set in
# this process too, before Ray is imported: it reads them once, and the library test is a Ray driver here.
LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
}  # fmt: skip
os.environ.update(LOOPBACK)
pytest.importorskip("ray", reason="the [ray] extra is not installed")  # installed by the lock and by [all]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray head with 2 CPUs on 127.0.0.1; yields its address."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, **LOOPBACK}
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
        f"--temp-dir={temp}", "--object-store-memory=200000000",
    ]  # fmt: skip
    log = Path(temp) / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):  # a real answer: Ray says so
            assert head.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        yield address
    finally:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def write_notes(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"note-{i:03d}.md").write_text(
            f"# Note {i}\n\nThe river {i} runs past the mountain city.\n\n## Banks\n\nWillows {i} line its banks.\n"
        )


def test_index_on_ray_into_a_milvus_server_equals_one_process(
    tmp_path: Path, ray_cluster: str, milvus: MilvusServer, models: list[str]
) -> None:
    folder = tmp_path / "notes"
    write_notes(folder, 40)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    env = {**os.environ, **LOOPBACK}
    cli = [sys.executable, "-m", "qwen3_retrieval.cli", "index"]

    def index_on_ray() -> subprocess.CompletedProcess[str]:
        command = [*cli, str(folder), "--uri", milvus.uri, *models, "--ray", ray_cluster, "--progress"]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)

    def clean_index() -> str:
        clean = tmp_path / f"clean-{time.monotonic_ns()}.db"
        done = subprocess.run([*cli, str(folder), "--uri", str(clean), *models], env=env, timeout=600)
        assert done.returncode == 0
        return str(clean)

    done = index_on_ray()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Indexed 80 passages from 40 files (0 unchanged, 0 removed)" in done.stdout, done.stdout
    assert "qwen3-rag: warning: skipped" in done.stderr and "broken.pdf" in done.stderr  # warned, run goes on
    assert "qwen3-rag: indexed 80 of about 80 passages (41 of 41 files)" in done.stderr, done.stderr[-3000:]
    assert same_index(milvus.uri, clean_index()) == 80

    # The mirror rules hold on Ray: a removed, a changed, a renamed and a new file.
    (folder / "note-000.md").unlink()
    (folder / "note-001.md").write_text("# Note 1\n\nThe river changed its course.\n")
    (folder / "note-002.md").rename(folder / "renamed.md")
    (folder / "new.md").write_text("# New\n\nA new note about lakes.\n")
    done = index_on_ray()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "from 3 files (37 unchanged, 2 removed, 2 passages reused)" in done.stdout, done.stdout
    assert same_index(milvus.uri, clean_index()) == 78
    done = index_on_ray()
    assert "Indexed 0 passages from 0 files (40 unchanged, 0 removed)" in done.stdout, done.stdout


def test_the_library_indexes_on_ray_too(tmp_path: Path, ray_cluster: str, checkpoints: dict[str, Path]) -> None:
    folder = tmp_path / "notes"
    write_notes(folder, 12)
    config = RagConfig(uri=str(tmp_path / "ray.db"), embedding_model=str(checkpoints["embedding"]), device="cpu",
                       dimensions=64)  # fmt: skip
    report = RagPipeline(config).index([str(folder)], ray=RayOptions(address=ray_cluster, files_per_task=4))
    assert report.files_indexed == 12 and report.passages_added == 24
    local = RagConfig(uri=str(tmp_path / "local.db"), embedding_model=config.embedding_model, device="cpu",
                      dimensions=64)  # fmt: skip
    RagPipeline(local).index([str(folder)])
    assert same_index(config.uri, local.uri) == 24
    assert index_rows(config.uri).popitem()[1][2].shape == (64,)


def test_an_unreachable_cluster_is_one_line(tmp_path: Path, docs_folder: Path, models: list[str]) -> None:
    env = {**os.environ, **LOOPBACK}
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    command = [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(docs_folder), "--uri",
               str(tmp_path / "rag.db"), *models, "--ray", address]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    # Before the check: Ray waited minutes for the address, then printed its own traceback.
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"qwen3-rag: error: cannot reach the Ray cluster at {address}: "), done.stderr
    assert not (tmp_path / "rag.db").exists()  # a failed run leaves nothing behind
