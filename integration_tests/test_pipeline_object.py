"""The pipeline as a library keeps its models: each model's weights are read once, however many questions follow."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline, index, release_pipelines, retrieve

QUESTIONS = ["gravity", "What is the capital of China?", "rivers", "how do I index?", "light and energy"]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each checkpoint's weights are read, by folder."""
    import transformers

    counted: Counter[str] = Counter()
    for name in ("AutoModel", "AutoModelForCausalLM"):
        auto = getattr(transformers, name)
        original = auto.from_pretrained

        def counting(model: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            counted[str(model)] += 1
            return _original(model, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", counting)
    return counted


def test_five_questions_read_each_models_weights_once(
    tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path], loads: Counter[str]
) -> None:
    # Private copies: a model another test still holds would be shared, and hide a load.
    embedding, reranker = tmp_path / "emb", tmp_path / "rr"
    shutil.copytree(checkpoints["embedding"], embedding)
    shutil.copytree(checkpoints["reranker"], reranker)
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(embedding), device="cpu")
    release_pipelines()

    index([str(docs_folder)], where)
    answers = [retrieve(q, where, reranker_model=str(reranker)) for q in QUESTIONS]
    # Before: 6 reads of the embedding model (the index, then one per question) and 5 of the reranker.
    assert loads == {str(embedding): 1, str(reranker): 1}
    assert all(answers)

    release_pipelines()  # the functions' models are dropped: an object of its own loads them again, once
    rag = RagPipeline(replace(where, reranker_model=str(reranker)))
    assert [rag.retrieve(q) for q in QUESTIONS] == answers
    assert [asyncio.run(rag.aretrieve(q)) for q in QUESTIONS] == answers
    assert rag.index([str(docs_folder)]).files_unchanged == 3
    assert loads == {str(embedding): 2, str(reranker): 2}


def test_framework_retrievers_over_the_commands_index_give_the_commands_sources(
    tmp_path: Path,
    docs_folder: Path,
    checkpoints: dict[str, Path],
    models: list[str],
    reranker_args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from qwen3_retrieval.cli import main
    from qwen3_retrieval.langchain import Qwen3RagRetriever as LangChainRetriever
    from qwen3_retrieval.llama_index import Qwen3RagRetriever as LlamaIndexRetriever

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    uri = str(tmp_path / "rag.db")
    assert main(["index", str(docs_folder), "--uri", uri, *models]) == 0
    capsys.readouterr()
    config = RagConfig(
        uri=uri,
        embedding_model=str(checkpoints["embedding"]),
        device="cpu",
        reranker_model=str(checkpoints["reranker"]),
    )
    pipeline = RagPipeline(config)
    langchain = LangChainRetriever(pipeline=pipeline, top_n=2)
    llama_index = LlamaIndexRetriever(pipeline, top_n=2)
    for question in ("gravity", "What is the capital of China?"):
        assert main(["ask", question, "--uri", uri, *models, *reranker_args, "--json", "--top-n", "2"]) == 0
        expected = [(s["text"], s["source"], s["score"]) for s in json.loads(capsys.readouterr().out)["sources"]]
        assert len(expected) == 2
        for docs in (langchain.invoke(question), asyncio.run(langchain.ainvoke(question))):
            got = [(d.page_content, d.metadata["source"], d.metadata["relevance_score"]) for d in docs]
            assert [g[:2] for g in got] == [e[:2] for e in expected]
            assert max(abs(g[2] - e[2]) for g, e in zip(got, expected)) < 1e-6
        for nodes in (llama_index.retrieve(question), asyncio.run(llama_index.aretrieve(question))):
            got = [(n.node.get_content(), n.node.metadata["source"], n.score) for n in nodes]
            assert [g[:2] for g in got] == [e[:2] for e in expected]
            assert max(abs(g[2] - e[2]) for g, e in zip(got, expected)) < 1e-6
    with pytest.raises(ValueError):
        LangChainRetriever(pipeline=pipeline, top_n=0)
    with pytest.raises(ValueError, match="mode must be one of hybrid, dense"):
        LlamaIndexRetriever(pipeline, mode="sparse")


def test_index_runs_of_one_pipeline_load_each_tokenizer_once(
    tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    embedding = shutil.copytree(checkpoints["embedding"], tmp_path / "emb")
    counted: Counter[str] = Counter()
    original = transformers.AutoTokenizer.from_pretrained

    def counting(model: Any, *args: Any, **kwargs: Any) -> Any:
        counted[str(model)] += 1
        return original(model, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counting)
    rag = RagPipeline(RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(embedding), device="cpu"))
    for _ in range(3):
        rag.index([str(docs_folder)], recreate=True)
    # The core's tokenizer and the one that sizes passages; before, the latter was loaded again on every run.
    assert counted[str(embedding)] == 2


def test_questions_read_the_file_records_once_until_the_index_changes(
    tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwen3_retrieval.rag.store import PassageStore

    reads: list[str] = []
    original = PassageStore.files

    def counting(self: PassageStore, root: str) -> Any:
        reads.append(root)
        return original(self, root)

    monkeypatch.setattr(PassageStore, "files", counting)
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu",
                      reranker_model=str(checkpoints["reranker"]))  # fmt: skip
    rag = RagPipeline(where)
    rag.index([str(docs_folder)])
    reads.clear()
    for question in QUESTIONS:
        assert rag.retrieve(question)
    # Before: every question read every file record (16 queries a root) to check the index was not damaged.
    assert len(reads) == 1, reads
    (docs_folder / "extra.md").write_text("# Extra\n\nA passage about deserts.\n")
    rag.index([str(docs_folder)])
    reads.clear()
    rag.retrieve("deserts")
    rag.retrieve("deserts")
    assert len(reads) == 1, reads  # the count changed: checked again, once
