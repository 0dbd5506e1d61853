from __future__ import annotations

import subprocess
import sys


def test_import_loads_no_torch_and_no_framework() -> None:
    code = (
        "import sys, qwen3_retrieval\n"
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core', 'llama_index') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_never_imports_frameworks() -> None:
    code = (
        "import sys\n"
        "from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker\n"
        "import qwen3_retrieval.testing\n"
        "print(','.join(m for m in ('langchain_core', 'llama_index') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api() -> None:
    import qwen3_retrieval

    assert sorted(qwen3_retrieval.__all__) == sorted(
        [
            "DEFAULT_EMBEDDING_MODEL",
            "DEFAULT_INSTRUCTION",
            "DEFAULT_RERANKER_MODEL",
            "Qwen3Embedder",
            "Qwen3Reranker",
            "__version__",
        ]
    )
    for name in qwen3_retrieval.__all__:
        assert getattr(qwen3_retrieval, name) is not None
