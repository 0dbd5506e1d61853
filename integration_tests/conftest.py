"""A loopback server speaking the OpenAI chat-completions wire format, recording what it receives."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


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
