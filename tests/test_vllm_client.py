"""The HTTP engine's transport behaviour against a loopback server speaking vLLM's wire format.

Exactness is tested against real vLLM servers (integration_tests/test_vllm.py); this covers what a real server
will not do on demand: refuse with 429/503, drop a connection, answer slowly, fail with 500.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from loopback import serving
from qwen3_retrieval.engines.vllm_http import VLLMServer
from qwen3_retrieval.errors import ServerError


class Script:
    """What the fake server answers, request by request, and what it received."""

    def __init__(self) -> None:
        # "503", "429", "500", "slow", "drop", or a hostile answer (see HOSTILE); then "ok" for ever
        self.plan: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.width = 2  # length of the vectors answered: [len(ids), 1.0, 1.0, ...]
        self.delay = 0.05  # seconds each request takes
        self.models: list[dict[str, str]] | None = None  # what GET /v1/models lists (None: no such route)


@pytest.fixture
def fake() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/v1/models" and script.models is not None:
                self._send(200, {"object": "list", "data": script.models})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            served = [m["id"] for m in script.models or []]
            if served and body["model"] not in served:  # as vLLM answers a name it does not serve
                with script.lock:
                    script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                message = f"The model `{body['model']}` does not exist."
                self._send(404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
                return
            with script.lock:
                script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                step = script.plan.pop(0) if script.plan else "ok"
                script.in_flight += 1
                script.most_in_flight = max(script.most_in_flight, script.in_flight)
            counted = True
            try:
                time.sleep(script.delay)
                # Done before any answer is sent: a client that has its answer may send its next request at once,
                # before this thread would reach the finally clause (a busy machine made that count 4 of 3).
                with script.lock:
                    script.in_flight -= 1
                    counted = False
                if step == "drop":
                    self.connection.close()
                    return
                if step == "slow":
                    time.sleep(2)
                if step in ("503", "429", "500"):
                    self._send(int(step), {"error": {"message": f"status {step}", "code": int(step)}})
                    return
                if step.startswith("echo-"):  # a proxy or debug server repeating the request's headers
                    echoed = f"bad request; headers: Authorization: {self.headers.get('Authorization')}"
                    self._send(int(step[5:]), {"error": {"message": echoed}})
                    return
                ones = [1.0] * (script.width - 1)
                rows = [{"index": i, "embedding": [float(len(ids)), *ones], "probs": [len(ids) / 100]}
                        for i, ids in enumerate(body["input"])]  # fmt: skip
                if step in HOSTILE:
                    self._hostile(step, rows)
                    return
                self._send(200, {"data": rows})
            finally:
                if counted:
                    with script.lock:
                        script.in_flight -= 1

        def _hostile(self, step: str, rows: list[dict[str, Any]]) -> None:
            if step in ("huge", "drip"):
                self._raw(step)
                return
            if step == "not-json":
                self._send(200, None, b"<html>502 Bad Gateway</html>")
                return
            for row in rows:
                row.update(HOSTILE[step])
            if step == "dup-index":
                rows[-1]["index"] = 0
            self._send(200, {"data": rows} if step != "no-data" else {"object": "list"})

        def _raw(self, step: str) -> None:
            try:
                if step == "huge":  # 150 MB, no Content-Length: the body ends when the connection closes
                    self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
                    for _ in range(150):
                        self.wfile.write(b"[" + b"1.0," * 262_000 + b"]")
                else:  # one byte every 0.5 s, status line included: every read gets a byte before its timeout
                    for byte in b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"data": []}':
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.5)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, status: int, payload: dict[str, Any] | None, raw: bytes = b"") -> None:
            data = json.dumps(payload).encode() if payload is not None else raw
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    with serving(Handler) as url:
        yield script, url


SEQUENCES = [[1] * n for n in range(1, 11)]
HOSTILE: dict[str, dict[str, Any]] = {
    "not-json": {},
    "no-data": {},
    "huge": {},
    "drip": {},
    "dup-index": {},
    "short-vector": {"embedding": [1.0]},
    "nan-vector": {"embedding": [float("nan"), 1.0]},
    "nan-score": {"probs": [float("nan")]},
    "score-7.5": {"probs": [7.5]},
    "string-score": {"probs": ["0.9"]},
}


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


def test_key_never_in_repr_or_pickle(fake: tuple[Script, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    script, url = fake
    server = client(url)
    assert "sk-fake-secret" not in repr(server)
    data = pickle.dumps(server)
    assert b"sk-fake-secret" not in data
    monkeypatch.setenv("VLLM_API_KEY", "sk-from-the-environment")  # where the copy runs
    assert pickle.loads(data).embed([[1, 2, 3]]) == [[3.0, 1.0]]
    assert script.requests[-1]["auth"] == "Bearer sk-from-the-environment"


@pytest.mark.parametrize("status", ["400", "404", "500", "503"])
def test_server_error_bodies_are_shown_with_secrets_masked(fake: tuple[Script, str], status: str) -> None:
    script, url = fake
    host = url.removeprefix("http://")
    for server, sent in [
        (VLLMServer(url, "m", api_key="sk-fake-secret", retries=0), "Bearer ***"),
        (VLLMServer(f"http://ann:pw-url-secret@{host}", "m", retries=0), "Basic ***"),
    ]:
        script.plan = [f"echo-{status}"]
        with pytest.raises((ServerError, ValueError)) as caught:
            server.embed([[1]])
        message = str(caught.value)
        assert "sk-fake-secret" not in message and "pw-url-secret" not in message and "\n" not in message
        assert f"Authorization: {sent}" in message  # what the server said is still shown
    assert script.requests[0]["auth"] == "Bearer sk-fake-secret"


def test_a_password_in_the_url_is_sent_and_never_shown(fake: tuple[Script, str]) -> None:
    import base64
    import pickle

    from qwen3_retrieval import Qwen3Embedder

    script, url = fake
    host = url.removeprefix("http://")
    server = VLLMServer(f"http://ann:pw-url-secret@{host}", "m")
    assert server.embed([[1, 2]]) == [[2.0, 1.0]]
    assert script.requests[-1]["auth"] == "Basic " + base64.b64encode(b"ann:pw-url-secret").decode()
    script.plan = ["500"]
    with pytest.raises(ServerError) as caught:
        server.embed([[1]])
    embedder = Qwen3Embedder("m", base_url=f"http://ann:pw-url-secret@{host}")
    shown = [str(caught.value), repr(server), repr(embedder), str(embedder.base_url)]
    assert not [s for s in shown if "pw-url-secret" in s or "sk-fake-secret" in s], shown
    assert b"pw-url-secret" not in pickle.dumps(embedder)
    from qwen3_retrieval.langchain import Qwen3Rerank
    from qwen3_retrieval.llama_index import Qwen3Embedding

    keyed = [
        Qwen3Embedder("m", base_url=url, api_key="sk-fake-secret"),
        Qwen3Rerank(model="m", base_url=url, api_key="sk-fake-secret"),
        Qwen3Embedding(model_name="m", base_url=f"http://ann:pw-url-secret@{host}"),
    ]
    for component in keyed:  # core objects and adapters alike: neither the key nor the password is pickled
        data = pickle.dumps(component)
        assert b"sk-fake-secret" not in data and b"pw-url-secret" not in data, type(component)
        assert "sk-fake-secret" not in repr(component) and "pw-url-secret" not in repr(component)
    with pytest.raises(ValueError, match="one Authorization header cannot carry both"):
        VLLMServer(f"http://ann:pw-url-secret@{host}", "m", api_key="sk-fake-secret")


@pytest.mark.parametrize("key", ["sk-fake-secret\n", " sk-fake-secret", "sk-fake\rsecret", "sk-fäke"])
def test_a_key_that_no_header_can_carry_is_refused_up_front(fake: tuple[Script, str], key: str) -> None:
    from qwen3_retrieval import Qwen3Reranker

    script, url = fake
    for make in (lambda: VLLMServer(url, "m", api_key=key), lambda: Qwen3Reranker("m", base_url=url, api_key=key)):
        with pytest.raises(ValueError, match=r"api_key contains .* at position \d+.*strip it") as caught:
            make()
        assert "fake" not in str(caught.value)  # the message names the problem, never the key
    assert not script.requests  # nothing was sent, nothing retried


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("not-json", "it is not JSON"),
        ("no-data", "no 'data' list"),
        ("dup-index", "row indexes must be 0 to 2, each once"),
        ("short-vector", "a vector of 1 numbers where the model gives 2"),
        ("nan-vector", "expected a finite number, got 'nan'"),
        ("nan-score", "expected a finite number, got 'nan'"),
        ("score-7.5", "a probability of 7.5, outside 0 to 1"),
        ("string-score", "expected a finite number, got '0.9'"),
        ("huge", "an answer of more than 851968 bytes"),
    ],
)
def test_a_bad_answer_is_a_one_line_error_naming_the_url(fake: tuple[Script, str], step: str, problem: str) -> None:
    script, url = fake
    server = VLLMServer(url, "m", api_key="sk-fake-secret", retries=0)
    call = server.classify if "score" in step else lambda seqs: server.embed(seqs, width=2)
    for run in (call, lambda seqs: asyncio.run(server.aclassify(seqs) if "score" in step else server.aembed(seqs, 2))):
        script.plan = [step]
        with pytest.raises(
            ServerError, match=rf"^the vLLM server at {url.removesuffix('/v1')}/\S+ sent .*{re.escape(problem)}"
        ) as caught:
            run([[1], [1, 2], [1, 2, 3]])
        assert "\n" not in str(caught.value)


def test_the_timeout_is_a_deadline_for_the_whole_answer(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.plan = ["drip"]
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"did not answer within 1 s"):
        VLLMServer(url, "m", timeout=1.0, retries=0).embed([[1]])
    # Before, each byte restarted httpx's read timeout: this answer held the call for about 40 s.
    assert time.monotonic() - started < 10


def test_bad_url_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="base_url must be an http"):
        VLLMServer("127.0.0.1:8000", "m")
    from qwen3_retrieval import Qwen3Embedder

    with pytest.raises(ValueError, match="base_url must be an http"):
        Qwen3Embedder("x", base_url="localhost:8000")
    with pytest.raises(ValueError, match="unknown engine"):
        Qwen3Embedder("x", engine="onnx")


def test_framework_async_calls_are_concurrent_requests_not_threads(
    fake: tuple[Script, str], embedding_path: Path
) -> None:
    from qwen3_retrieval.langchain import Qwen3Embeddings
    from qwen3_retrieval.llama_index import Qwen3Embedding

    script, url = fake
    script.width = json.loads((embedding_path / "config.json").read_text())["hidden_size"]
    script.delay = 0.5
    ours = [t for t in threading.enumerate() if "process_request" not in t.name]

    async def calls(embed: Any) -> int:
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                alive = [t for t in threading.enumerate() if "process_request" not in t.name]
                most = max(most, len(alive) - len(ours))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        vectors = await asyncio.gather(*(embed(f"question {i}") for i in range(32)))
        watcher.cancel()
        assert len(vectors) == 32 and all(len(v) == script.width for v in vectors)
        return most

    for component, embed in [
        (langchain := Qwen3Embeddings(model=str(embedding_path), base_url=url), langchain.aembed_query),
        (llama := Qwen3Embedding(model_name=str(embedding_path), base_url=url), llama.aget_query_embedding),
    ]:
        script.most_in_flight = 0
        extra_threads = asyncio.run(calls(embed))
        # Before, each call held a thread of the default pool (at most 6 here) for its whole request.
        assert script.most_in_flight >= 16, (type(component), script.most_in_flight)
        assert extra_threads <= 8, (type(component), extra_threads)


@pytest.mark.parametrize(
    ("listed", "sent"),
    [
        ([{"id": "emb-prod", "root": "m"}], "emb-prod"),  # --served-model-name emb-prod, started from our model
        ([{"id": "emb-prod", "root": "/models/emb"}], "emb-prod"),  # the only model served
        ([{"id": "a", "root": "/x"}, {"id": "emb", "root": "m"}], "emb"),  # the one started from our model
        ([{"id": "m", "root": "/x"}, {"id": "b", "root": "m"}], "m"),  # our own name, served as it is
    ],
)
def test_a_served_model_name_is_found_on_the_server(
    fake: tuple[Script, str], listed: list[dict[str, str]], sent: str
) -> None:
    script, url = fake
    script.models = listed
    server = VLLMServer(url, "m")
    assert server.embed([[1, 2]]) == [[2.0, 1.0]]
    assert asyncio.run(server.aclassify([[1, 2]])) == [0.02]
    assert {r["body"]["model"] for r in script.requests} == {sent}


def test_a_server_of_other_models_is_still_a_clear_error(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.models = [{"id": "a", "root": "/x"}, {"id": "b", "root": "/y"}]
    with pytest.raises(ValueError, match=r"does not serve model 'm' .*pass the served name as the model"):
        VLLMServer(url, "m").embed([[1]])


def test_the_served_name_and_request_shape_are_options_of_the_core_and_both_frameworks(
    fake: tuple[Script, str], embedding_path: Path
) -> None:
    from qwen3_retrieval import Qwen3Embedder
    from qwen3_retrieval.langchain import Qwen3Embeddings
    from qwen3_retrieval.llama_index import Qwen3Embedding

    script, url = fake
    script.width = json.loads((embedding_path / "config.json").read_text())["hidden_size"]
    script.models = [{"id": "a", "root": "/x"}, {"id": "emb-prod", "root": "/y"}]  # no way to guess ours
    script.delay = 0.2
    texts = [f"passage {i}" for i in range(24)]
    options = {"base_url": url, "served_model_name": "emb-prod", "max_concurrency": 6, "max_batch": 2}
    for component in (
        Qwen3Embedder(embedding_path, **options),
        Qwen3Embeddings(model=str(embedding_path), **options),
        Qwen3Embedding(model_name=str(embedding_path), **options),
    ):
        script.requests.clear()
        script.most_in_flight = 0
        embed = getattr(component, "embed_documents", None) or component.get_text_embedding_batch
        assert len(embed(texts)) == 24
        # Before, the name could only be guessed (here: "does not serve model") and 4 x 32 was fixed.
        assert {r["body"]["model"] for r in script.requests} == {"emb-prod"}, type(component)
        assert max(len(r["body"]["input"]) for r in script.requests) == 2
        assert 5 <= script.most_in_flight <= 6, (type(component), script.most_in_flight)
