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
HEADS: dict[str, int] = {}
"""The PID of the ``ray start`` process of each cluster address: its workers are found among its descendants."""
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
        HEADS[address] = head.pid
        yield address
    finally:
        head.send_signal(signal.SIGINT)
        try:  # Ray's own shutdown; a head that hangs in it is killed, and Ray's reaper then ends the rest
            head.wait(timeout=20)
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


def test_pages_index_on_ray_as_in_one_process(
    tmp_path: Path, ray_cluster: str, vl_embedding: Path, vl_reranker: Path
) -> None:
    """``--pages`` on Ray: workers render the pages and embed them; the index and the answers are one process's."""
    from PIL import Image, ImageDraw
    from reportlab.pdfgen import canvas

    folder = tmp_path / "scans"
    folder.mkdir()
    # Pages of 100 x 140 points render at the largest enlargement (4x), about 220 image tokens each, where a
    # full-size page gets 1800: the test pays for what it checks, not for pixels.
    pdf = canvas.Canvas(str(folder / "report.pdf"), pagesize=(100, 140))
    for line in ("Revenue grew by ten percent.", "Costs fell in every region."):
        pdf.setFont("Helvetica", 6)
        pdf.drawString(5, 120, line)
        pdf.showPage()
    pdf.save()
    slide = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(slide).text((20, 20), "Invoice total: 1,250 EUR", fill="black")
    slide.save(folder / "slide.png")
    (folder / "notes.md").write_text("# Notes\n\nMilvus is a vector database.\n")

    def pipeline(name: str) -> RagPipeline:
        return RagPipeline(RagConfig(uri=str(tmp_path / name), embedding_model=str(vl_embedding),
                                     reranker_model=str(vl_reranker), device="cpu", pages=True))  # fmt: skip

    on_ray, local = pipeline("ray.db"), pipeline("local.db")
    report = on_ray.index([str(folder)], ray=RayOptions(address=ray_cluster, files_per_task=1))
    local.index([str(folder)])
    assert report.files_indexed == 3
    assert same_index(on_ray.config.uri, local.config.uri) == 6  # 2 text passages, 2 pages, the slide, the note
    found, expected = (p.retrieve("the invoice", candidates=10, top_n=6, mode="dense") for p in (on_ray, local))
    assert [(h.path, h.location, h.image) for h in found] == [(h.path, h.location, h.image) for h in expected]
    assert sum(bool(h.image) for h in found) == 3
    assert [h.score for h in found] == pytest.approx([h.score for h in expected], abs=1e-5)


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


def descendants(pid: int) -> dict[int, str]:
    """The processes started, directly or not, by ``pid``: their command lines (a Ray worker's is its title)."""
    parents: dict[int, int] = {}
    lines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: dict[int, str] = {}
    for child, line in lines.items():
        parent = parents.get(child)
        while parent and parent != pid:
            parent = parents.get(parent)
        if parent == pid:
            found[child] = line
    return found


NOISE = ("core_worker", "constructor arguments", "too_many_pings", "GOAWAY", "Traceback")


def test_more_embedders_than_cpus_a_stall_and_a_lost_worker_end_in_the_one_process_index(
    tmp_path: Path, ray_cluster: str, models: list[str]
) -> None:
    folder = tmp_path / "notes"
    write_notes(folder, 60)
    uri = str(tmp_path / "ray.db")
    env = {**os.environ, **LOOPBACK}
    cli = [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(folder), *models]
    on_ray = [*cli, "--uri", uri, "--ray", ray_cluster]

    # A run with no progress for the stall timeout (here the actors' start) stops with one line.
    done = subprocess.run([*on_ray, "--ray-stall-timeout", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("qwen3-rag: error: no progress on the Ray cluster in 1 s (0 of 60 files done)")
    assert "run the same command again to finish (--ray-stall-timeout sets the wait)" in done.stderr

    # Three embedders on 2 CPUs: they share 1.5 CPUs (the reading tasks keep half a CPU) instead of waiting
    # forever; one of them is killed by its PID as soon as it runs.
    run = subprocess.Popen([*on_ray, "--ray-embedders", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)  # fmt: skip
    try:
        deadline, killed = time.monotonic() + 240, None
        while killed is None and run.poll() is None and time.monotonic() < deadline:
            actors = [pid for pid, line in descendants(HEADS[ray_cluster]).items() if "_Embed" in line]
            if actors:
                time.sleep(1.0)  # into its model's loading, or its first batch
                os.kill(actors[0], signal.SIGKILL)
                killed = actors[0]
            time.sleep(0.2)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=60)
    assert run.returncode == 1 or "Indexed 120 passages from 60 files" in out, out
    assert killed is not None, err[-3000:]
    assert "qwen3-rag: warning: the Ray cluster has 2 CPUs free, fewer than 3.5 for 3 embedding actors and " \
        "reading: each actor gets 0.5 of a CPU" in err, err[-3000:]  # fmt: skip
    # Ray restarts the actor and the run finishes, or it fails in one line; either way a re-run finishes.
    assert run.returncode == 0 or (run.returncode == 1 and err.count("qwen3-rag: error:") == 1), err[-3000:]
    assert not any(noise in err for noise in NOISE), err[-3000:]
    done = subprocess.run(on_ray, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and not any(noise in done.stderr for noise in NOISE), done.stderr[-3000:]
    clean = str(tmp_path / "clean.db")
    assert subprocess.run([*cli, "--uri", clean], env=env, timeout=300).returncode == 0
    assert same_index(uri, clean) == 120


def test_gpus_the_cluster_lacks_are_one_line(tmp_path: Path, ray_cluster: str, models: list[str]) -> None:
    env = {**os.environ, **LOOPBACK}
    folder = tmp_path / "notes"
    write_notes(folder, 2)
    command = [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(folder), "--uri", str(tmp_path / "rag.db"),
               *models, "--ray", ray_cluster, "--ray-embedders", "2", "--ray-gpus", "0.5"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr == (
        "qwen3-rag: error: 2 embedding actors with 0.5 GPU each ask for 1 GPUs, but the Ray cluster has 0 free: "
        "use --ray-gpus 0 (embed on CPUs)\n"
    )
