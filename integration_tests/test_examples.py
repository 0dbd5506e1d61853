"""Each example runs end to end: real Milvus Lite stores of both frameworks, the real OpenAI clients over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FakeOpenAI
from qwen3_retrieval.rag.answer import SYSTEM_PROMPT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env, timeout=300
    )


def run_twice(name: str, *args: str) -> dict[str, object]:
    """Run an example twice on the same --uri, as a user runs it again; both runs must print the same result."""
    results = []
    for _ in range(2):
        done = run_example(name, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout))
    assert results[1] == results[0]  # the second run met the first one's collection: nothing added twice
    return results[1]


def pipeline_args(docs: Path, question: str, uri: Path, checkpoints: dict[str, Path]) -> list[str]:
    return [
        str(docs),
        "--question",
        question,
        "--uri",
        str(uri),
        "--embedding-model",
        str(checkpoints["embedding"]),
        "--reranker-model",
        str(checkpoints["reranker"]),
        "--device",
        "cpu",
    ]


def expected_sources(docs: Path, question: str, checkpoints: dict[str, Path]) -> list[tuple[str, float]]:
    """The best 3 passages and their scores, recomputed with the core reranker over every passage.

    The folder has fewer passages than the examples retrieve (10), so every passage is a candidate whatever the
    random-weight retrieval ranks first, and the reranker alone decides the order.
    """
    from transformers import AutoTokenizer

    from qwen3_retrieval import Qwen3Reranker
    from qwen3_retrieval.rag.passages import PassageSplitter, Splitting

    splitter = PassageSplitter(AutoTokenizer.from_pretrained(checkpoints["embedding"]), Splitting())
    texts = [p.text for f in sorted(docs.rglob("*.[mt][dx]*")) for p in splitter.split(f.read_text())]
    assert len(texts) < 10
    ranked = Qwen3Reranker(checkpoints["reranker"], device="cpu").rank(question, texts, top_n=3)
    return [(texts[i], score) for i, score in ranked]


def assert_sources(sources: list[dict[str, object]], expected: list[tuple[str, float]]) -> None:
    assert [s["text"] for s in sources] == [text for text, _ in expected]
    assert [s["score"] for s in sources] == pytest.approx([score for _, score in expected], abs=1e-5)


@pytest.mark.parametrize("name", ["langchain_milvus_rag.py", "llamaindex_milvus_rag.py", "hybrid_search.py"])
def test_help(name: str) -> None:
    done = run_example(name, "--help")
    assert done.returncode == 0 and "--question" in done.stdout


@pytest.mark.parametrize("name", ["langchain_milvus_rag.py", "llamaindex_milvus_rag.py"])
def test_rag_examples_answer_from_the_reranked_passages(
    name: str, tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path], fake_openai: FakeOpenAI
) -> None:
    result = run_twice(name, *pipeline_args(docs_folder, "What is Milvus?", tmp_path / "example.db", checkpoints))
    assert result["answer"] == fake_openai.answer
    sources = result["sources"]
    assert_sources(sources, expected_sources(docs_folder, "What is Milvus?", checkpoints))
    prompt = "\n".join(
        m["content"] for m in fake_openai.requests[-1]["body"]["messages"] if isinstance(m["content"], str)
    )
    positions = [prompt.index(s["text"]) for s in sources]
    assert positions == sorted(positions)  # the chat model got the reranked passages, best first
    # qwen3-rag's prompt in both: the passages inside delimiters, under the instruction that they are data.
    # Before: LlamaIndex's default prompt, whose dashes a passage could forge.
    system, user = (m["content"] for m in fake_openai.requests[-1]["body"]["messages"])
    assert system == SYSTEM_PROMPT and user.startswith("<passages>\n") and user.count("</passages>") == 1
    assert all(s["text"] in user.split("</passages>")[0] for s in sources)


def test_hybrid_example(tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path]) -> None:
    result = run_twice(
        "hybrid_search.py", *pipeline_args(docs_folder, "capital of China", tmp_path / "hybrid.db", checkpoints)
    )
    assert result["candidates"] == 4
    assert_sources(result["sources"], expected_sources(docs_folder, "capital of China", checkpoints))
