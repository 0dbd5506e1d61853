"""Many threads and asyncio tasks over objects with different options get exactly their sequential results."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from texts import DOCUMENTS, QUERIES

TOL = 1e-6
N_THREADS = 12
N_TASKS = 24
QUERY = "What is the capital of China?"


@pytest.fixture
def calls(embedding_path: Path, reranker_path: Path) -> dict[str, Callable[[], Any]]:
    """Named calls over core, LangChain and LlamaIndex objects sharing one checkpoint per kind."""
    from langchain_core.documents import Document

    from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank
    from qwen3_retrieval.llama_index import Qwen3Embedding

    short = Qwen3Embedder(embedding_path, device="cpu", max_length=16)
    long = Qwen3Embedder(embedding_path, device="cpu", max_length=4096, dimensions=32)
    custom = Qwen3Embedder(embedding_path, device="cpu", instruction="Find the matching passage", max_length=24)
    lc_embed = Qwen3Embeddings(model=str(embedding_path), device="cpu", max_length=8)
    li_embed = Qwen3Embedding(model_name=str(embedding_path), device="cpu", max_length=4096, dimensions=48)
    tight = Qwen3Reranker(reranker_path, device="cpu", max_length=100)
    roomy = Qwen3Reranker(reranker_path, device="cpu", max_length=4096, instruction="Find geography facts")
    lc_rerank = Qwen3Rerank(model=str(reranker_path), device="cpu", top_n=None, max_length=110)
    alone = Qwen3Embedder(embedding_path, device="cpu", max_length=20, batch_wait_ms=None)  # no merging
    patient = Qwen3Reranker(reranker_path, device="cpu", max_length=4096, batch_wait_ms=20)
    docs = [Document(page_content=d) for d in DOCUMENTS]
    return {
        "unmerged queries": lambda: alone.embed_queries(QUERIES),
        "patient scores": lambda: np.array(patient.score(QUERIES[1], DOCUMENTS)),
        "short docs": lambda: short.embed_documents(DOCUMENTS),
        "short queries": lambda: short.embed_queries(QUERIES),
        "long docs": lambda: long.embed_documents(DOCUMENTS),
        "custom queries": lambda: custom.embed_queries(QUERIES),
        "langchain docs": lambda: np.array(lc_embed.embed_documents(DOCUMENTS)),
        "langchain query": lambda: np.array(lc_embed.embed_query(QUERIES[0])),
        "llama-index docs": lambda: np.array(li_embed.get_text_embedding_batch(DOCUMENTS)),
        "llama-index query": lambda: np.array(li_embed.get_query_embedding(QUERIES[1])),
        "tight scores": lambda: np.array(tight.score(QUERY, DOCUMENTS)),
        "roomy scores": lambda: np.array(roomy.score(QUERY, DOCUMENTS)),
        "langchain rerank": lambda: np.array(
            [d.metadata["relevance_score"] for d in lc_rerank.compress_documents(docs, QUERY)]
        ),
    }


def async_calls(embedding_path: Path, reranker_path: Path) -> dict[str, Callable[[], Any]]:
    from langchain_core.documents import Document

    from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank
    from qwen3_retrieval.llama_index import Qwen3Embedding

    lc_embed = Qwen3Embeddings(model=str(embedding_path), device="cpu", max_length=12)
    li_embed = Qwen3Embedding(model_name=str(embedding_path), device="cpu", max_length=2048, dimensions=40)
    lc_rerank = Qwen3Rerank(model=str(reranker_path), device="cpu", top_n=None, max_length=96)
    docs = [Document(page_content=d) for d in DOCUMENTS]

    async def rerank() -> list[float]:
        return [d.metadata["relevance_score"] for d in await lc_rerank.acompress_documents(docs, QUERY)]

    return {
        "async langchain docs": lambda: lc_embed.aembed_documents(DOCUMENTS),
        "async langchain query": lambda: lc_embed.aembed_query(QUERIES[2]),
        "async llama-index docs": lambda: li_embed.aget_text_embedding_batch(DOCUMENTS),
        "async llama-index query": lambda: li_embed.aget_query_embedding(QUERIES[0]),
        "async langchain rerank": rerank,
    }


def test_threads_and_tasks_at_once_equal_sequential_results(
    calls: dict[str, Callable[[], Any]], embedding_path: Path, reranker_path: Path
) -> None:
    acalls = async_calls(embedding_path, reranker_path)
    expected = {name: np.asarray(call()) for name, call in calls.items()}
    expected.update({name: np.asarray(asyncio.run(call())) for name, call in acalls.items()})

    rng = random.Random(0)
    plans = [rng.sample(sorted(calls), k=len(calls)) for _ in range(N_THREADS)]
    results: list[tuple[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(N_THREADS + 1)

    def worker(plan: list[str]) -> None:
        start.wait()
        for name in plan:
            try:
                value = np.asarray(calls[name]())
            except BaseException as err:  # every failure is reported, none is lost in a thread
                with lock:
                    errors.append(err)
                continue
            with lock:
                results.append((name, value))

    async def tasks() -> list[tuple[str, Any]]:
        names = [rng.choice(sorted(acalls)) for _ in range(N_TASKS)]
        values = await asyncio.gather(*(acalls[name]() for name in names))
        return list(zip(names, values))

    threads = [threading.Thread(target=worker, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    start.wait()
    task_results = asyncio.run(tasks())  # runs while the threads run
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == N_THREADS * len(calls)
    for name, value in results + task_results:
        np.testing.assert_allclose(np.asarray(value), expected[name], atol=TOL, err_msg=name)


@pytest.mark.parametrize("wait", [-1, float("nan"), float("inf"), "2"])
def test_batch_wait_must_be_a_finite_non_negative_number(embedding_path: Path, wait: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="batch_wait_ms"):
        Qwen3Embedder(embedding_path, batch_wait_ms=wait)
