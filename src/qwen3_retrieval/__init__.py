"""Qwen3-Embedding and Qwen3-Reranker, exact and fast, for LangChain, LlamaIndex and Milvus RAG.

The core (:class:`Qwen3Embedder`, :class:`Qwen3Reranker`, and for texts and images :class:`Qwen3VLEmbedder`,
:class:`Qwen3VLReranker`) has no LangChain or LlamaIndex dependency. Framework
adapters live in :mod:`qwen3_retrieval.langchain` and :mod:`qwen3_retrieval.llama_index`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_INSTRUCTION, DEFAULT_RERANKER_MODEL

if TYPE_CHECKING:
    from qwen3_retrieval.embedder import Qwen3Embedder
    from qwen3_retrieval.reranker import Qwen3Reranker
    from qwen3_retrieval.vl.models import Qwen3VLEmbedder, Qwen3VLReranker

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_RERANKER_MODEL",
    "Qwen3Embedder",
    "Qwen3Reranker",
    "Qwen3VLEmbedder",
    "Qwen3VLReranker",
    "__version__",
]

# torch and transformers load only when a model class is first used, so `import qwen3_retrieval` stays cheap.
_LAZY = {
    "Qwen3Embedder": "qwen3_retrieval.embedder",
    "Qwen3Reranker": "qwen3_retrieval.reranker",
    "Qwen3VLEmbedder": "qwen3_retrieval.vl.models",
    "Qwen3VLReranker": "qwen3_retrieval.vl.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qwen3_retrieval' has no attribute {name!r}")
