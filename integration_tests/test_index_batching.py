"""Indexing at volume: passages of many files are embedded together, so a server (or a fleet behind one URL) gets
full requests side by side instead of one file's few passages at a time; the index equals a file-by-file one."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen3_retrieval import Qwen3Embedder
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline
from qwen3_retrieval.rag.store import PassageStore

FILES = 40


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default backlog of 5 would itself cap how many requests arrive at once


class Counting:
    """An embedding server that answers our own core's vectors, slowly, counting requests in flight."""

    def __init__(self, embedder: Qwen3Embedder) -> None:
        self.embedder = embedder
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = self.requests = 0

    def enter(self) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def replica(counting: Counting, shared: Counting | None = None) -> type[BaseHTTPRequestHandler]:
    """A vLLM-like embedding server's handler that counts its requests in flight (and the fleet's, if shared)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._send({"object": "list", "data": [{"id": "emb-prod", "root": "/models/emb"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["model"] == "emb-prod"
            tallies = [counting] if shared is None else [counting, shared]
            for tally in tallies:
                tally.enter()
            time.sleep(0.3)
            # The raw pooled state of each token-id sequence, as vLLM computes it (the core's own engine here).
            ids = [counting.embedder.processor.documents([""])[0][-1]]  # loads the model on the first request
            assert all(sequence[-1] == ids[0] for sequence in body["input"])  # each ends in <|endoftext|>
            engine = counting.embedder.loaded.engine  # type: ignore[union-attr]
            pooled = engine.embed(body["input"], counting.embedder.options.policy, None)
            for tally in tallies:
                tally.leave()
            rows = [{"index": i, "embedding": row} for i, row in enumerate(pooled.tolist())]
            self._send({"object": "list", "data": rows})

        def _send(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def balancer(ports: list[int]) -> type[BaseHTTPRequestHandler]:
    """An HTTP balancer's handler: each request goes to the next replica in turn (round robin), as nginx does."""
    turn = itertools.cycle(ports)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._forward(None)

        def do_POST(self) -> None:
            self._forward(self.rfile.read(int(self.headers["Content-Length"])))

        def _forward(self, body: bytes | None) -> None:
            with lock:
                port = next(turn)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port until the block ends; yields the port."""
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(embedding_path: Path) -> Iterator[tuple[Counting, str]]:
    counting = Counting(Qwen3Embedder(embedding_path, device="cpu", normalize=False))
    with serving(replica(counting)) as port:
        yield counting, f"http://127.0.0.1:{port}/v1"


def many_files(folder: Path) -> Path:
    for i in range(FILES):
        (folder / f"note-{i:02d}.md").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"note-{i:02d}.md").write_text(f"# Note {i}\n\nThe river {i} runs past the mountain city.\n")
    return folder


def stored(uri: str) -> dict[str, list[float]]:
    with PassageStore(uri, "qwen3_rag") as store:
        assert store.exists()
        rows = store.client.query("qwen3_rag", filter="", output_fields=["id", "vector"], limit=16384)
    return {row["id"]: list(row["vector"]) for row in rows}


def same_as_one_process(uri: str, folder: Path, embedding_path: Path, tmp_path: Path) -> None:
    """The index at ``uri`` holds what indexing ``folder`` in this process stores: same ids, vectors to 1e-5."""
    local = RagConfig(uri=str(tmp_path / "local.db"), embedding_model=str(embedding_path), device="cpu")
    RagPipeline(local).index([str(folder)])
    ours, theirs = stored(uri), stored(local.uri)
    assert sorted(ours) == sorted(theirs)
    np.testing.assert_allclose(
        np.array([ours[key] for key in sorted(ours)]), np.array([theirs[key] for key in sorted(theirs)]), atol=1e-5
    )


def test_indexing_keeps_a_server_busy_and_stores_what_one_process_does(
    tmp_path: Path, embedding_path: Path, server: tuple[Counting, str]
) -> None:
    counting, url = server
    folder = many_files(tmp_path / "notes")
    fleet = RagConfig(
        uri=str(tmp_path / "fleet.db"), embedding_model=str(embedding_path), embedding_url=url,
        max_concurrency=8, max_batch=4,
    )  # fmt: skip
    report = RagPipeline(fleet).index([str(folder)])
    assert report.files_indexed == FILES and report.passages_added == FILES
    # Before: one file's single passage per call, so one request at a time (and 40 of them, one after another).
    assert counting.requests == FILES // 4
    assert counting.most_in_flight == 8, counting.most_in_flight

    same_as_one_process(fleet.uri, folder, embedding_path, tmp_path)


def test_indexing_keeps_every_replica_behind_one_balancing_url_busy(tmp_path: Path, embedding_path: Path) -> None:
    embedder = Qwen3Embedder(embedding_path, device="cpu", normalize=False)
    fleet, replicas = Counting(embedder), [Counting(embedder), Counting(embedder)]
    folder = many_files(tmp_path / "notes")
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(serving(replica(one, fleet))) for one in replicas]
        front = stack.enter_context(serving(balancer(ports)))
        config = RagConfig(
            uri=str(tmp_path / "fleet.db"), embedding_model=str(embedding_path),
            embedding_url=f"http://127.0.0.1:{front}/v1", max_concurrency=8, max_batch=4,
        )  # fmt: skip
        report = RagPipeline(config).index([str(folder)])
    assert report.files_indexed == FILES
    # Two replicas, one URL: the 10 requests of 4 passages are shared out, and 8 are in flight at once. The
    # balancer takes turns without looking at load, so when 8 are in flight each replica holds at least 3 of them
    # (it has only 2 others) and together they hold 8; a late request may make one hold 5 (before: 1 each).
    assert [one.requests for one in replicas] == [5, 5] and fleet.requests == FILES // 4
    assert fleet.most_in_flight == 8, fleet.most_in_flight
    most = [one.most_in_flight for one in replicas]
    assert min(most) >= 3 and sum(most) >= 8, most
    same_as_one_process(config.uri, folder, embedding_path, tmp_path)
