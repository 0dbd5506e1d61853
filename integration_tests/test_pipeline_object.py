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
