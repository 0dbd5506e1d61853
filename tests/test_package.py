from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Run ``imports`` in a fresh interpreter; return which of ``modules`` it left in ``sys.modules``."""
    code = f"import sys\n{imports}\nprint(','.join(m for m in {modules!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_loads_no_torch_and_no_framework() -> None:
    assert loaded_after("import qwen3_retrieval", ("torch", "transformers", "langchain_core", "llama_index")) == []


def test_core_never_imports_frameworks() -> None:
    imports = (
        "from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker, Qwen3VLEmbedder, Qwen3VLReranker\n"
        "import qwen3_retrieval.testing, qwen3_retrieval.testing.vl_checkpoints"
    )
    assert loaded_after(imports, ("langchain_core", "llama_index")) == []


def test_public_api() -> None:
    import qwen3_retrieval

    assert sorted(qwen3_retrieval.__all__) == sorted(
        [
            "DEFAULT_EMBEDDING_MODEL",
            "DEFAULT_INSTRUCTION",
            "DEFAULT_RERANKER_MODEL",
            "Qwen3Embedder",
            "Qwen3Reranker",
            "Qwen3VLEmbedder",
            "Qwen3VLReranker",
            "__version__",
        ]
    )
    for name in qwen3_retrieval.__all__:
        assert getattr(qwen3_retrieval, name) is not None


def test_network_other_than_127_0_0_1_is_blocked_in_tests() -> None:
    """pytest-socket guards every test: an accidental hub call fails loudly instead of hiding offline."""
    import socket

    import pytest
    from pytest_socket import SocketConnectBlockedError

    with pytest.raises(SocketConnectBlockedError, match=r"127\.0\.0\.2"):
        socket.create_connection(("127.0.0.2", 9), timeout=1)  # loopback, yet not on the allow list


QUIET_RUN = """
import sys
from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
embedding, reranker, attention = sys.argv[1], sys.argv[2], sys.argv[3] or None
options = {"device": "cpu", "attn_implementation": attention}
Qwen3Embedder(embedding, **options).embed_documents(["one text", "and a longer second text"])
Qwen3Embedder(embedding, **options).embed_query("a query")
Qwen3Reranker(reranker, **options).score("a query", ["first document", "a longer second document"])
"""


@pytest.mark.parametrize("attention", ["", "sdpa"])  # packed batches (the default), and padded ones
def test_calls_print_nothing_and_warn_nothing(embedding_path: Path, reranker_path: Path, attention: str) -> None:
    # A fresh process: libraries print their deprecation notices once per process. With warnings as errors and
    # transformers' logging at its default level, anything our calls trigger shows up on stderr.
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", QUIET_RUN, str(embedding_path), str(reranker_path), attention],
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # transformers' weight-loading progress bar is the one thing allowed (it is the user's to switch off).
    noise = [line for line in done.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert noise == []
