"""Adding an engine: one registry entry and the engine's own module, nothing else."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker, Qwen3VLEmbedder
from qwen3_retrieval.batching import BatchPolicy
from qwen3_retrieval.engines import RerankPrompts
from qwen3_retrieval.engines.registry import ENGINES, EngineEntry
from qwen3_retrieval.loading import LoadedEmbedding

WIDTH = 64


class ConstantEmbedding:
    """Every sequence's pooled state is its length, then ones."""

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: Any) -> torch.Tensor:
        rows = torch.ones((len(sequences), WIDTH))
        rows[:, 0] = torch.tensor([float(len(s)) for s in sequences])
        return rows

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        return self.embed(sequences, policy, None)


class LengthScoring:
    """A prompt's P(yes) falls with its length."""

    def score(self, prompts: RerankPrompts, policy: BatchPolicy, progress: Any) -> list[float]:
        return [1 / len(prompt) for prompt in prompts.whole()]

    async def ascore(self, prompts: RerankPrompts, policy: BatchPolicy) -> list[float]:
        return self.score(prompts, policy, None)


def dummy_module() -> types.ModuleType:
    """The engine's own module: how it loads (here, nothing to load)."""
    module = types.ModuleType("dummy_engine")

    def load_embedding(options: Any, tokenizer: Any) -> LoadedEmbedding:
        return LoadedEmbedding(tokenizer, ConstantEmbedding(), WIDTH)

    def load_scoring(options: Any, tokenizer: Any, config: Any, yes_no: Any) -> LengthScoring:
        return LengthScoring()

    module.load_embedding = load_embedding  # type: ignore[attr-defined]
    module.load_scoring = load_scoring  # type: ignore[attr-defined]
    return module


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(sys.modules, "dummy_engine", dummy_module())
    entry = EngineEntry("dummy", "dummy_engine", vl_refusal="engine='dummy' runs the text models only")
    monkeypatch.setitem(ENGINES, entry.name, entry)
    return "dummy"


def test_a_registered_engine_runs_both_text_models(dummy: str, embedding_path: Path, reranker_path: Path) -> None:
    embedder = Qwen3Embedder(str(embedding_path), engine=dummy, dimensions=32)
    vectors = embedder.embed_documents(["one", "one two three"])
    assert vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # the core still cuts and normalises
    assert vectors[1, 0] > vectors[0, 0]
    reranker = Qwen3Reranker(str(reranker_path), engine=dummy)
    scores = reranker.score("query", ["short", "a much longer document than the first one"])
    assert scores[0] > scores[1]


async def test_a_registered_engine_runs_async(dummy: str, embedding_path: Path) -> None:
    embedder = Qwen3Embedder(str(embedding_path), engine=dummy)
    assert (await embedder.aembed_query("q")).shape == (WIDTH,)


def test_its_refusal_is_its_own(dummy: str, embedding_path: Path) -> None:
    with pytest.raises(ValueError, match="engine='dummy' runs the text models only"):
        Qwen3VLEmbedder(str(embedding_path), engine=dummy)


def test_an_unknown_engine_names_the_registered_ones(dummy: str) -> None:
    with pytest.raises(ValueError, match="use 'transformers' \\(default\\), 'vllm' or 'dummy'"):
        Qwen3Embedder("Qwen/Qwen3-Embedding-0.6B", engine="nope")
