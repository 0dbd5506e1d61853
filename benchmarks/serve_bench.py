"""``qwen3-rag serve`` under load: requests per second at 1, 8 and 64 concurrent clients.

    python benchmarks/serve_bench.py --shape tiny           # seconds: random tiny checkpoints
    python benchmarks/serve_bench.py --shape 0.6B           # the real 0.6B shape (random weights), minutes on a CPU
    python benchmarks/serve_bench.py --clients 1,8,64 --seconds 10

A folder of small Markdown files is indexed in this process, then the server is started as a user starts it
(its own process, on 127.0.0.1) and each route is driven by N clients at once, each sending its next request
as soon as its last one is answered, for a fixed time. Before the clock, one request of each kind is checked
against the same call in this process. The table shows requests per second and the median and 95th-percentile
latency; the server's micro-batcher merges the concurrent calls, so requests per second should rise with the
clients until the model is busy all the time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

WORDS = [
    "vector", "database", "index", "search", "passage", "model", "query", "rerank", "embedding", "cluster", "shard",
    "replica", "segment", "memory", "disk", "latency", "throughput", "batch", "token", "prompt", "answer", "source",
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", choices=["tiny", "0.6B"])
    p.add_argument("--clients", default="1,8,64", help="concurrent clients, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="time per route and client count")
    p.add_argument("--files", type=int, default=40, help="Markdown files indexed")
    p.add_argument("--routes", default="search,embeddings,rerank", help="routes measured, comma-separated")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from qwen3_retrieval.testing.checkpoints import make_embedding_checkpoint, make_reranker_checkpoint

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    embedding = make_embedding_checkpoint(work / "embedding", shape=args.shape)
    reranker = make_reranker_checkpoint(work / "reranker", shape=args.shape)
    docs = work / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    for n in range(args.files):
        sections = [f"## Part {k}\n\n" + " ".join(rng.choice(WORDS, 60)) + ".\n" for k in range(3)]
        (docs / f"doc{n}.md").write_text(f"# Document {n}\n\n" + "\n".join(sections))
    uri = str(work / "bench.db")
    questions = [" ".join(rng.choice(WORDS, 8)) + "?" for _ in range(64)]
    expected = index_and_expect(uri, docs, str(embedding), str(reranker), questions[0])

    port = free_port()
    command = [
        sys.executable, "-m", "qwen3_retrieval.cli", "serve", "--uri", uri, "--embedding-model", str(embedding),
        "--reranker-model", str(reranker), "--port", str(port), "--max-inputs", "64",
    ]  # fmt: skip
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(url, server)
        check(url, expected, questions[0])
        rows = []
        for route in args.routes.split(","):
            for clients in [int(c) for c in args.clients.split(",")]:
                rate, p50, p95, count = asyncio.run(load(url, route, clients, args.seconds, questions))
                rows.append((route, clients, rate, p50, p95, count))
                print(f"{route:<11} {clients:>3} clients: {rate:8.1f} req/s  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
                      f"({count} requests)", flush=True)  # fmt: skip
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
        log.close()
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} logical CPUs; {args.shape} shape; {args.files} files; "
          f"{args.seconds:g} s per row; Python {platform.python_version()}\n")  # fmt: skip
    print("| route | clients | requests/s | p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|")
    for route, clients, rate, p50, p95, _ in rows:
        print(f"| {route} | {clients} | {rate:.1f} | {p50:.1f} | {p95:.1f} |")


def index_and_expect(uri: str, docs: Path, embedding: str, reranker: str, question: str) -> dict[str, Any]:
    from qwen3_retrieval import Qwen3Embedder
    from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

    config = RagConfig(uri=uri, embedding_model=embedding, reranker_model=reranker)
    with RagPipeline(config) as rag:
        rag.index([docs])
        sources = [s.as_dict() for s in rag.retrieve(question)]
    return {"sources": sources, "query": Qwen3Embedder(embedding).embed_queries([question])[0]}


def check(url: str, expected: dict[str, Any], question: str) -> None:
    """The server answers as this process does (what the clock then measures is the same work)."""
    got = httpx.post(f"{url}/v1/search", json={"question": question}, timeout=120).json()["sources"]
    assert [s["text"] for s in got] == [s["text"] for s in expected["sources"]], "search differs from in-process"
    diff = max(abs(a["score"] - b["score"]) for a, b in zip(got, expected["sources"]))
    body = {"input": [question], "input_type": "query"}
    vector = httpx.post(f"{url}/v1/embeddings", json=body, timeout=120).json()["data"][0]["embedding"]
    vdiff = float(np.max(np.abs(np.asarray(vector) - expected["query"])))
    print(f"checked against in-process calls: scores within {diff:.1e}, query vector within {vdiff:.1e}")
    assert diff < 1e-4 and vdiff < 1e-4


async def load(url: str, route: str, clients: int, seconds: float, questions: list[str]) -> tuple[float, ...]:
    """``clients`` loops sending ``route`` requests for ``seconds``; returns rate, p50, p95 (ms), count."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def one(n: int) -> None:
            k = n
            while time.perf_counter() < end:
                question = questions[k % len(questions)]
                path, body = request(route, question)
                start = time.perf_counter()
                answer = await client.post(path, json=body)
                answer.raise_for_status()
                latencies.append(time.perf_counter() - start)
                k += clients

        begun = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(clients)))
        elapsed = time.perf_counter() - begun
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return len(ms) / elapsed, statistics.median(ms), p95, len(ms)


def request(route: str, question: str) -> tuple[str, dict[str, Any]]:
    if route == "search":
        return "/v1/search", {"question": question}
    if route == "embeddings":
        return "/v1/embeddings", {"input": [question], "input_type": "query"}
    if route == "rerank":
        documents = [f"{question} {w} " * 8 for w in WORDS[:10]]
        return "/v1/rerank", {"query": question, "documents": documents, "top_n": 3}
    raise SystemExit(f"unknown route {route!r}; use search, embeddings or rerank")


def wait(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
