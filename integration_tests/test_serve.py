"""``qwen3-rag serve``: real servers on 127.0.0.1, each a process of its own stopped by its PID.

Server A runs as a user starts it (no key, read-only) with a chat model (a loopback fake); server B requires a
key, takes small limits and indexes over HTTP. What they answer is compared with the same calls in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import free_port, index_rows
from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

TOL = 1e-5
KEY = "sk-serve-test-secret"
QUESTIONS = ["What is Milvus?", "capital of China", "What attracts two bodies?", "HNSW indexes"]
TEXTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "",
    "Ünïcödé text — with dashes and «quotes»",
    " ".join(["long"] * 30 + ["document", "about", "music"] * 20),
]
ANSWER = "Milvus is a vector database [1]."


class Serve:
    """``qwen3-rag serve`` on a port of its own."""

    def __init__(self, uri: str, models: list[str], *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(uri).parent / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "qwen3_retrieval.cli", "serve", "--uri", uri, *models]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port), *extra], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )  # fmt: skip

    def wait(self, headers: dict[str, str] | None = None) -> None:
        """Wait for a real answer (a search), not an open port."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                answer = httpx.post(
                    f"{self.url}/v1/search", json={"question": "x", "candidates": 3}, headers=headers, timeout=30
                )
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"qwen3-rag serve did not answer: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.process.returncode


def fake_chat() -> tuple[ThreadingHTTPServer, str]:
    """A chat-completions server that streams :data:`ANSWER` two words a chunk."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            words = ANSWER.split(" ")
            for i in range(0, len(words), 2):
                piece = " ".join(words[i : i + 2]) + (" " if i + 2 < len(words) else "")
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def copy_index(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serve")
    docs = root / "docs"
    docs.mkdir()
    (docs / "milvus.md").write_text(
        "# Milvus\n\nMilvus is a vector database built for similarity search.\n\n## Indexes\n\n"
        "Milvus builds indexes such as HNSW over vectors.\n"
    )
    (docs / "capital.md").write_text("# Capitals\n\nThe capital of China is Beijing.\n")
    (docs / "physics.txt").write_text("Gravity is a force that attracts two bodies.\n\nMass bends space.")
    embedding, reranker = str(checkpoints["embedding"]), str(checkpoints["reranker"])
    config = RagConfig(uri=str(root / "a.db"), embedding_model=embedding, reranker_model=reranker, device="cpu")
    with RagPipeline(config) as rag:  # the index, and what this process answers, before the servers lock it
        rag.index([docs])
        expected = {q: [s.as_dict() for s in rag.retrieve(q, candidates=4, top_n=3)] for q in QUESTIONS}
        dense = [s.as_dict() for s in rag.retrieve(QUESTIONS[0], candidates=3, top_n=2, mode="dense")]
    rows = index_rows(config.uri)
    copy_index(root / "a.db", root / "b.db")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nNot for the index.\n")
    models = ["--embedding-model", embedding, "--reranker-model", reranker, "--device", "cpu"]
    chat, chat_url = fake_chat()
    a = Serve(config.uri, models, env={"OPENAI_API_KEY": "sk-chat", "OPENAI_BASE_URL": chat_url})
    b = Serve(
        str(root / "b.db"), models, "--allow-index", "--max-request-bytes", "4096", "--max-inputs", "4",
        env={"QWEN3_RAG_API_KEY": KEY, "OPENAI_API_KEY": ""},
    )  # fmt: skip
    try:
        a.wait()
        b.wait({"Authorization": f"Bearer {KEY}"})
        yield {"a": a, "b": b, "expected": expected, "dense": dense, "rows": rows, "uri": config.uri,
               "embedding": embedding, "reranker": reranker, "docs": docs, "outside": outside}  # fmt: skip
    finally:
        a.stop()
        b.stop()
        chat.shutdown()


@pytest.fixture(scope="module")
def local(setup: dict[str, Any]) -> dict[str, Any]:
    return {"embedder": Qwen3Embedder(setup["embedding"], device="cpu"),
            "reranker": Qwen3Reranker(setup["reranker"], device="cpu")}  # fmt: skip


def same_sources(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [(s["source"], s["text"]) for s in got] == [(s["source"], s["text"]) for s in expected]
    assert [s["score"] for s in got] == pytest.approx([s["score"] for s in expected], abs=TOL)


def test_search_equals_the_pipeline_in_process(setup: dict[str, Any]) -> None:
    url = setup["a"].url
    for question, expected in setup["expected"].items():
        got = httpx.post(f"{url}/v1/search", json={"question": question, "candidates": 4, "top_n": 3}).json()
        same_sources(got["sources"], expected)
    body = {"question": QUESTIONS[0], "candidates": 3, "top_n": 2, "mode": "dense"}
    same_sources(httpx.post(f"{url}/v1/search", json=body).json()["sources"], setup["dense"])
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [setup["embedding"], setup["reranker"]]


def test_ask_streams_the_answer_then_the_sources(setup: dict[str, Any]) -> None:
    events = []
    with httpx.stream("POST", f"{setup['a'].url}/v1/ask", json={"question": QUESTIONS[0], "candidates": 4}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[-2:] == ["sources", "done"] and set(names[:-2]) == {"answer"}
    assert "".join(d["text"] for n, d in events if n == "answer") == ANSWER
    assert events[-2][1]["answer"] == ANSWER
    same_sources(events[-2][1]["sources"], setup["expected"][QUESTIONS[0]])


def test_openai_client_and_langchain_embeddings_equal_in_process(setup: dict[str, Any], local: dict[str, Any]) -> None:
    from langchain_openai import OpenAIEmbeddings
    from openai import OpenAI

    client = OpenAI(base_url=f"{setup['a'].url}/v1", api_key="unused")
    documents = local["embedder"].embed_documents(TEXTS)
    queries = local["embedder"].embed_queries(QUESTIONS)
    got = client.embeddings.create(input=TEXTS, model=setup["embedding"])  # base64, the client's default
    np.testing.assert_allclose([d.embedding for d in got.data], documents, atol=TOL)
    assert got.usage.prompt_tokens > 0
    got = client.embeddings.create(input=QUESTIONS, model=setup["embedding"], extra_body={"input_type": "query"})
    np.testing.assert_allclose([d.embedding for d in got.data], queries, atol=TOL)
    got = client.embeddings.create(input=TEXTS[:2], model=setup["embedding"], dimensions=32, encoding_format="float")
    cut = Qwen3Embedder(setup["embedding"], device="cpu", dimensions=32).embed_documents(TEXTS[:2])
    np.testing.assert_allclose([d.embedding for d in got.data], cut, atol=TOL)
    # LangChain counts tiktoken tokens unless told not to: those ids mean nothing to a Qwen3 model.
    lc = OpenAIEmbeddings(base_url=f"{setup['a'].url}/v1", api_key="unused", model=setup["embedding"],
                          check_embedding_ctx_length=False)  # fmt: skip
    np.testing.assert_allclose(lc.embed_documents(TEXTS), documents, atol=TOL)


def test_our_http_engine_is_exact_against_the_server(setup: dict[str, Any], local: dict[str, Any]) -> None:
    base = f"{setup['a'].url}/v1"
    for dimensions in (None, 32):
        remote = Qwen3Embedder(setup["embedding"], base_url=base, dimensions=dimensions)
        here = Qwen3Embedder(setup["embedding"], device="cpu", dimensions=dimensions)
        np.testing.assert_allclose(remote.embed_documents(TEXTS), here.embed_documents(TEXTS), atol=TOL)
        np.testing.assert_allclose(remote.embed_queries(QUESTIONS), here.embed_queries(QUESTIONS), atol=TOL)
    remote_reranker = Qwen3Reranker(setup["reranker"], base_url=base)
    for question in QUESTIONS:
        ours, theirs = remote_reranker.rank(question, TEXTS), local["reranker"].rank(question, TEXTS)
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], abs=TOL)


def test_rerank_schema(setup: dict[str, Any], local: dict[str, Any]) -> None:
    import cohere

    expected = local["reranker"].rank(QUESTIONS[1], TEXTS, top_n=3)
    client = cohere.ClientV2(api_key="unused", base_url=setup["a"].url)  # Cohere's own client, on /v2/rerank
    got = client.rerank(model=setup["reranker"], query=QUESTIONS[1], documents=TEXTS, top_n=3)
    assert [r.index for r in got.results] == [i for i, _ in expected]
    assert [r.relevance_score for r in got.results] == pytest.approx([s for _, s in expected], abs=TOL)
    for path, documents in (("/v1/rerank", TEXTS), ("/v2/rerank", [{"text": t} for t in TEXTS])):
        body = {"model": setup["reranker"], "query": QUESTIONS[1], "documents": documents, "top_n": 3}
        got = httpx.post(setup["a"].url + path, json=body).json()
        assert [r["index"] for r in got["results"]] == [i for i, _ in expected]
        assert [r["relevance_score"] for r in got["results"]] == pytest.approx([s for _, s in expected], abs=TOL)
        assert got["results"][0]["document"]["text"] == TEXTS[expected[0][0]]


async def test_concurrent_requests_equal_sequential_ones(setup: dict[str, Any]) -> None:
    url = setup["a"].url
    jobs = [("/v1/search", {"question": q, "candidates": 4}) for q in QUESTIONS] * 4
    jobs += [("/v1/embeddings", {"input": [t], "input_type": "query"}) for t in TEXTS] * 4
    jobs += [("/v1/rerank", {"query": q, "documents": TEXTS}) for q in QUESTIONS] * 2
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        sequential = [(await client.post(path, json=body)).json() for path, body in jobs]
        answers = await asyncio.gather(*(client.post(path, json=body) for path, body in jobs))
    for (path, _), one, many in zip(jobs, sequential, [a.json() for a in answers]):
        if path == "/v1/search":
            same_sources(many["sources"], one["sources"])
        elif path == "/v1/embeddings":
            np.testing.assert_allclose(many["data"][0]["embedding"], one["data"][0]["embedding"], atol=TOL)
        else:
            assert [r["index"] for r in many["results"]] == [r["index"] for r in one["results"]]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/search", {"question": " \t"}, 422, "the question is empty"),
        ("/v1/search", {"question": "x", "top_n": 20}, 422, "top_n 20 is more than candidates 10"),
        ("/v1/search", {"question": "x", "mode": "sparse"}, 422, "mode"),
        ("/v1/search", {"question": "x", "candidates": 100000}, 422, "--max-inputs"),
        ("/v1/search", {"top_n": 2}, 422, "question: Field required"),
        ("/v1/embeddings", {"input": []}, 422, "input must be"),
        ("/v1/embeddings", {"input": "x", "model": "gpt-4"}, 404, "does not exist"),
        ("/v1/embeddings", {"input": "x", "dimensions": 4}, 422, "dimensions must be from"),
        ("/v1/embeddings", {"input": [[1, 2, 10**9]]}, 422, "outside the model's vocabulary"),
        ("/v1/embeddings", {"input": [[1, 2]], "input_type": "query"}, 422, "token ids carry their own prompt"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "png"}, 422, "encoding_format"),
        ("/classify", {"input": ["text"]}, 422, "input"),
        ("/v1/rerank", {"query": "", "documents": ["a"]}, 422, "query"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
        ("/v1/index", {"paths": ["."]}, 403, "read-only: start the server with --allow-index"),
    ],
)
def test_bad_input_is_a_clear_4xx(setup: dict[str, Any], path: str, body: dict[str, Any], status: int, words: str):
    answer = httpx.post(setup["a"].url + path, json=body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]["message"]


def test_a_body_that_is_not_json_says_so(setup: dict[str, Any]) -> None:
    answer = httpx.post(setup["a"].url + "/v1/search", content=b"question=x")
    assert answer.status_code == 422 and "Content-Type: application/json" in answer.json()["error"]["message"]


def test_key_limits_and_indexing_under_the_served_roots(setup: dict[str, Any], local: dict[str, Any]) -> None:
    b, auth = setup["b"], {"Authorization": f"Bearer {KEY}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        answer = httpx.post(f"{b.url}/v1/search", json={"question": "x"}, headers=headers)
        assert answer.status_code == 401 and "--api-key" in answer.json()["error"]["message"]
        assert KEY not in answer.text
    assert httpx.get(f"{b.url}/health").status_code == 200  # a probe needs no key
    remote = Qwen3Embedder(setup["embedding"], base_url=f"{b.url}/v1", api_key=KEY)  # our engine sends it
    np.testing.assert_allclose(remote.embed_query("x"), local["embedder"].embed_query("x"), atol=TOL)
    with pytest.raises(ValueError, match="refused the API key"):
        Qwen3Embedder(setup["embedding"], base_url=f"{b.url}/v1", api_key="wrong").embed_query("x")
    big = httpx.post(f"{b.url}/v1/embeddings", json={"input": ["word " * 2000]}, headers=auth)
    assert big.status_code == 413 and "--max-request-bytes" in big.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"input": ["'
        yield b"w" * 5000
        yield b'"]}'

    streamed = httpx.post(f"{b.url}/v1/embeddings", content=chunks(), headers=auth)
    assert streamed.status_code == 413
    many = httpx.post(f"{b.url}/v1/embeddings", json={"input": ["a"] * 5}, headers=auth)
    assert many.status_code == 422 and "split it into requests of at most 4" in many.json()["error"]["message"]
    escape = setup["docs"] / "escape"
    escape.symlink_to(setup["outside"])
    try:
        for path in (setup["outside"], setup["outside"] / "secret.md", escape, setup["docs"] / ".." / "outside"):
            answer = httpx.post(f"{b.url}/v1/index", json={"paths": [str(path)]}, headers=auth)
            assert answer.status_code == 403 and "outside the folders" in answer.json()["error"]["message"]
    finally:
        escape.unlink()
    (setup["docs"] / "new.md").write_text("# Zebras\n\nZebras have black and white stripes.\n")
    try:
        report = httpx.post(f"{b.url}/v1/index", json={"paths": [str(setup["docs"])]}, headers=auth, timeout=60)
        assert report.status_code == 200, report.text
        assert report.json()["files_indexed"] == 1 and report.json()["files_unchanged"] == 3
        body = {"question": "zebra stripes", "top_n": 4, "candidates": 4}
        found = httpx.post(f"{b.url}/v1/search", json=body, headers=auth).json()["sources"]
        assert any(s["source"].endswith("new.md") for s in found)
    finally:
        (setup["docs"] / "new.md").unlink()
    assert KEY not in b.log.read_text()


def test_sigterm_finishes_requests_in_flight_and_leaves_the_index(setup: dict[str, Any]) -> None:
    a = setup["a"]
    long = [" ".join(["music history"] * 400)] * 64
    result: dict[str, Any] = {}

    def slow() -> None:
        result["answer"] = httpx.post(f"{a.url}/v1/embeddings", json={"input": long}, timeout=120)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)  # the request is in the server
    os.kill(a.process.pid, signal.SIGTERM)
    thread.join(timeout=120)
    assert result["answer"].status_code == 200 and len(result["answer"].json()["data"]) == 64
    assert a.process.wait(timeout=60) == 0, a.log.read_text()[-2000:]
    rows = index_rows(setup["uri"])
    assert sorted(rows) == sorted(setup["rows"])
    for key, (path, text, vector) in rows.items():
        assert (path, text) == setup["rows"][key][:2]
        np.testing.assert_array_equal(vector, setup["rows"][key][2])
