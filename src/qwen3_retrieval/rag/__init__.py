"""The RAG pipeline behind the ``qwen3-rag`` command: passages, a Milvus store, and cited answers."""

from qwen3_retrieval.rag.errors import RagError

__all__ = ["RagError"]
