"""Shared fixtures: small random-weight Qwen3 checkpoints built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from qwen3_retrieval.testing import make_embedding_checkpoint, make_reranker_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "embedding": make_embedding_checkpoint(root / "embedding"),
        "embedding-no-eos": make_embedding_checkpoint(root / "embedding-no-eos", append_eos=False),
        "reranker": make_reranker_checkpoint(root / "reranker"),
        "reranker-seq-cls": make_reranker_checkpoint(root / "reranker-seq-cls", kind="seq-cls"),
    }


@pytest.fixture(scope="session")
def embedding_path(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["embedding"]


@pytest.fixture(scope="session")
def reranker_path(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["reranker"]
