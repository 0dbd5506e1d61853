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
def checkpoints() -> dict[str, Path]:
    from qwen3_retrieval.testing import tiny_checkpoint

    kinds = ("embedding", "embedding-no-eos", "reranker", "reranker-seq-cls")
    return {kind: tiny_checkpoint(kind) for kind in kinds}  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def embedding_path(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["embedding"]


@pytest.fixture(scope="session")
def reranker_path(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["reranker"]
