"""Shared fixtures: a loopback chat-completions server, the test checkpoints as arguments, a Milvus Lite server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen3_retrieval.rag.store import PassageStore

COLLECTION = "qwen3_rag"


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server that does not print a traceback when a client hangs up on it.

    The broken-stream test makes the client drop the connection; socketserver would print the handler's
    ConnectionResetError on stderr, where the test reads the command's own output.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"  # "ok", "401", "slow", or "break" (the stream stops halfway, mid-chunk)
        self.answer = "Milvus is a vector database [1]."
        self.url = ""


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    state = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked responses, as real servers stream

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            if state.mode == "slow":
                time.sleep(3)
            if state.mode == "401":
                payload = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
                self._send(401, payload)
                return
            if body.get("stream"):
                self._stream(body["model"])
                return
            self._send(
                200,
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": state.answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

        def _stream(self, model: str) -> None:
            """Server-sent events, a few words a chunk, as chat-completions streams them."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            words = state.answer.split(" ")
            pieces = [" ".join(words[i : i + 2]) + (" " if i + 2 < len(words) else "") for i in range(0, len(words), 2)]
            for n, piece in enumerate(pieces):
                if state.mode == "break" and n == len(pieces) // 2:
                    self.wfile.write(b"400\r\ndata: {")  # a chunk promised, never finished: the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    return
                chunk = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                time.sleep(0.01)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

    server = LoopbackServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", state.url)
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def models(checkpoints: dict[str, Path]) -> list[str]:
    """The command's arguments for the tiny embedding checkpoint, on CPU."""
    return ["--embedding-model", str(checkpoints["embedding"]), "--device", "cpu"]


@pytest.fixture
def reranker_args(checkpoints: dict[str, Path]) -> list[str]:
    return ["--reranker-model", str(checkpoints["reranker"])]


@pytest.fixture
def docs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "faq").mkdir(parents=True)
    (folder / "milvus.md").write_text(
        "# Milvus\n\nMilvus is a vector database built for similarity search.\n\n"
        "## Indexes\n\nMilvus builds indexes such as HNSW over vectors.\n"
    )
    (folder / "faq" / "capital.md").write_text("# Capitals\n\nThe capital of China is Beijing.\n")
    (folder / "faq" / "physics.txt").write_text("Gravity is a force that attracts two bodies.\n\nMass bends space.")
    (folder / "faq" / "ignored.pdf").write_bytes(b"%PDF-1.4")
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusServer:
    """``python -m milvus_lite server`` on a data folder and a port of its own."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"milvus-{self.port}.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a real answer, not an open port
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                PassageStore(self.uri, COLLECTION, timeout=2).close()
                return
            except Exception:
                time.sleep(0.3)
        raise AssertionError(f"Milvus Lite server did not answer: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


@pytest.fixture
def milvus(tmp_path: Path) -> Iterator[MilvusServer]:
    (tmp_path / "milvus-data").mkdir()
    server = MilvusServer(tmp_path / "milvus-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def index_rows(uri: str) -> dict[str, tuple[str, str, np.ndarray]]:
    """Every passage of a qwen3-rag collection: id -> (path, text, vector)."""
    with PassageStore(uri, COLLECTION) as store:
        assert store.exists()
        found = store.client.query(COLLECTION, filter="", output_fields=["id", "path", "text", "vector"], limit=16384)
    return {r["id"]: (r["path"], r["text"], np.asarray(r["vector"], dtype=np.float32)) for r in found}


def same_index(a: str, b: str) -> int:
    """Check two collections hold the same passages (ids, paths, texts; vectors to 1e-5); return how many."""
    left, right = index_rows(a), index_rows(b)
    assert sorted(left) == sorted(right)
    for key, (path, text, vector) in left.items():
        assert (path, text) == right[key][:2]
        np.testing.assert_allclose(vector, right[key][2], atol=1e-5)
    return len(left)
