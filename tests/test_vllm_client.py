"""The HTTP engine's transport behaviour against a loopback server speaking vLLM's wire format.

Exactness is tested against real vLLM servers (integration_tests/test_vllm.py); this covers what a real server
will not do on demand: refuse with 429/503, drop a connection, answer slowly, fail with 500.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qwen3_retrieval.engines.vllm_http import VLLMServer
from qwen3_retrieval.errors import ServerError


class Script:
    """What the fake server answers, request by request, and what it received."""

    def __init__(self) -> None:
        self.plan: list[str] = []  # "503", "429", "500", "slow", "drop"; then "ok" for ever
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()


@pytest.fixture
def fake() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                step = script.plan.pop(0) if script.plan else "ok"
                script.in_flight += 1
                script.most_in_flight = max(script.most_in_flight, script.in_flight)
            try:
                time.sleep(0.05)
                if step == "drop":
                    self.connection.close()
                    return
                if step == "slow":
                    time.sleep(2)
                if step in ("503", "429", "500"):
                    self._send(int(step), {"error": {"message": f"status {step}", "code": int(step)}})
                    return
                rows = [{"index": i, "embedding": [float(len(ids)), 1.0], "probs": [len(ids) / 100]}
                        for i, ids in enumerate(body["input"])]  # fmt: skip
                self._send(200, {"data": rows})
            finally:
                with script.lock:
                    script.in_flight -= 1

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


SEQUENCES = [[1] * n for n in range(1, 11)]


def client(url: str, **kwargs: Any) -> VLLMServer:
    return VLLMServer(url, "m", api_key="sk-fake-secret", max_batch=3, **kwargs)


def test_batches_are_bounded_and_results_keep_their_order(fake: tuple[Script, str]) -> None:
    script, url = fake
    vectors = client(url, max_concurrency=2).embed(SEQUENCES)
    assert [v[0] for v in vectors] == [float(len(s)) for s in SEQUENCES]
    assert sorted(len(r["body"]["input"]) for r in script.requests) == [1, 3, 3, 3]  # two at a time: any order
    assert script.most_in_flight <= 2
    assert all(r["auth"] == "Bearer sk-fake-secret" and r["path"] == "/v1/embeddings" for r in script.requests)
    scores = client(url).classify(SEQUENCES)
    assert scores == [len(s) / 100 for s in SEQUENCES]
    assert script.requests[-1]["path"] == "/classify"


def test_async_requests_run_concurrently_within_the_bound(fake: tuple[Script, str]) -> None:
    script, url = fake
    vectors = asyncio.run(client(url, max_concurrency=3).aembed(SEQUENCES))
    assert [v[0] for v in vectors] == [float(len(s)) for s in SEQUENCES]
    assert 2 <= script.most_in_flight <= 3


@pytest.mark.parametrize("refusal", ["503", "429", "drop"])
def test_busy_and_dropped_are_retried(fake: tuple[Script, str], refusal: str) -> None:
    script, url = fake
    script.plan = [refusal, refusal]
    assert client(url).classify([[1, 2]]) == [0.02]
    assert len(script.requests) == 3
    script.plan = [refusal, refusal]
    assert asyncio.run(client(url).aclassify([[1, 2]])) == [0.02]


def test_other_failures_are_one_line_and_not_retried(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.plan = ["500"]
    with pytest.raises(ServerError, match=r"^the vLLM server at http://127\.0\.0\.1:\d+/v1/embeddings .*HTTP 500"):
        client(url).embed([[1]])
    assert len(script.requests) == 1
    script.plan = ["503"] * 10
    with pytest.raises(ServerError, match="HTTP 503"):
        client(url, retries=1).embed([[1]])


def test_timeout_names_the_option(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.plan = ["slow"]
    with pytest.raises(ServerError, match=r"did not answer within 0\.5 s; raise timeout=") as caught:
        client(url, timeout=0.5).embed([[1]])
    assert "\n" not in str(caught.value) and "sk-fake-secret" not in str(caught.value)


def test_key_never_in_repr_or_pickle_state(fake: tuple[Script, str]) -> None:
    import pickle

    _, url = fake
    server = client(url)
    assert "sk-fake-secret" not in repr(server)
    copy = pickle.loads(pickle.dumps(server))
    assert copy.embed([[1, 2, 3]]) == [[3.0, 1.0]]


def test_bad_url_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="base_url must be an http"):
        VLLMServer("127.0.0.1:8000", "m")
    from qwen3_retrieval import Qwen3Embedder

    with pytest.raises(ValueError, match="base_url must be an http"):
        Qwen3Embedder("x", base_url="localhost:8000")
    with pytest.raises(ValueError, match="unknown engine"):
        Qwen3Embedder("x", engine="onnx")
