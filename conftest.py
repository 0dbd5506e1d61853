"""Shared fixtures: small random-weight Qwen3 checkpoints built offline once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
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


@pytest.fixture
def progress(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Print a line past pytest's capture, so a test that runs for minutes shows what it is doing."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(message: str) -> None:
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"    [{request.node.name}] {message}")

    return say
