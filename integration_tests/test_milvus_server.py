"""qwen3-rag against a real Milvus server: Milvus Lite's gRPC server, the Milvus protocol over TCP on 127.0.0.1.

The server runs in its own process, started and waited for here, and stopped by its own PID; one test kills it
with SIGKILL in the middle of an index run, restarts it on the same data, and runs the index again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from conftest import MilvusServer
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline
from qwen3_retrieval.rag.store import PassageStore

COLLECTION = "qwen3_rag"


def passages(uri: str) -> list[tuple[str, str]]:
    with PassageStore(uri, COLLECTION) as store:
        assert store.exists()
        rows = store.client.query(COLLECTION, filter="", output_fields=["id", "text"], limit=16384)
    return sorted((row["id"], row["text"]) for row in rows)


def test_index_and_ask_on_a_milvus_server_as_on_a_file(
    tmp_path: Path, milvus: MilvusServer, docs_folder: Path, checkpoints: dict[str, Path]
) -> None:
    config = RagConfig(
        uri=milvus.uri, embedding_model=str(checkpoints["embedding"]), device="cpu",
        reranker_model=str(checkpoints["reranker"]),
    )  # fmt: skip
    server, file = RagPipeline(config), RagPipeline(replace(config, uri=str(tmp_path / "rag.db")))
    report = server.index([str(docs_folder)])
    assert report.files_indexed == 3 and report.passages_total > 0
    assert file.index([str(docs_folder)]).passages_total == report.passages_total
    for question in ("What is the capital of China?", "gravity"):
        assert server.retrieve(question, mode="dense") == file.retrieve(question, mode="dense")
        assert [s.text for s in server.retrieve(question)] == [s.text for s in file.retrieve(question)]
    assert server.index([str(docs_folder)]).files_unchanged == 3


def test_a_server_killed_during_index_and_restarted_is_finished_by_the_next_run(
    tmp_path: Path, milvus: MilvusServer, checkpoints: dict[str, Path], models: list[str]
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    notes = 1500  # several index batches, so that a run stopped after the first stored one has more to store
    for i in range(notes):
        (folder / f"note-{i:04d}.md").write_text(f"# Note {i}\n\nThe river {i} runs past the mountain city.\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def index_into(uri: str) -> list[str]:
        return [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(folder), "--uri", uri, *models]

    command = index_into(milvus.uri)
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stored, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None and not stored:
        try:
            with PassageStore(milvus.uri, COLLECTION, timeout=2) as store:
                stored = store.count() if store.exists() else 0
        except Exception:
            pass
        time.sleep(0.05)
    # The run is paused while the server dies, so that the kill lands mid-run however fast or loaded the machine is.
    assert run.poll() is None, run.communicate()[1]
    os.kill(run.pid, signal.SIGSTOP)
    with PassageStore(milvus.uri, COLLECTION, timeout=10) as store:
        assert 0 < store.count() < notes  # stopped after some passages were stored and before all of them
    milvus.kill()
    os.kill(run.pid, signal.SIGCONT)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1, err  # the run saw its server vanish
    assert err.count("\n") == 1 and err.startswith("qwen3-rag: error: "), err

    milvus.start()  # the same data folder and port
    # Before: this run failed with "collection 'qwen3_rag' already exists", and only the one after it worked.
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    clean = str(tmp_path / "clean.db")
    assert subprocess.run(index_into(clean), env=env, timeout=300, capture_output=True).returncode == 0
    assert passages(milvus.uri) == passages(clean)


def test_a_server_that_is_down_at_ask_time_is_one_line(
    tmp_path: Path, milvus: MilvusServer, docs_folder: Path, models: list[str]
) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "qwen3_retrieval.cli"]
    indexed = subprocess.run([*cli, "index", str(docs_folder), "--uri", milvus.uri, *models], env=env, timeout=300)
    assert indexed.returncode == 0
    milvus.stop()
    done = subprocess.run(
        [*cli, "ask", "gravity", "--uri", milvus.uri, *models, "--no-llm"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"qwen3-rag: error: cannot reach the Milvus server at {milvus.uri}"), done.stderr
    assert done.stdout == ""
