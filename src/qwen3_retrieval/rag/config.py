"""Where an index lives and which models embed and rerank it: :class:`RagConfig`, and what it opens and loads.

The pipeline, the indexing run and the Ray workers all read it; it depends on none of them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.passages import Splitting
from qwen3_retrieval.rag.store import PassageStore

RENAMED = {"server_requests": "max_concurrency", "server_batch": "max_batch"}
"""Old option names, accepted with a ``DeprecationWarning``: the new ones are the models' (``base_url``-side)."""


@dataclass(frozen=True)
class RagConfig:
    """Where the passages live and how they are embedded and cut; the collection records and enforces it."""

    uri: str = "./qwen3_rag.db"
    collection: str = "qwen3_rag"
    token: str | None = field(default=None, repr=False)
    milvus_timeout: float = 10.0
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embedding_url: str | None = None
    embedding_api_key: str | None = field(default=None, repr=False)
    dimensions: int | None = None
    device: str | None = None
    splitting: Splitting | None = None
    """How to cut files into passages; None: the collection's, or the default for a new one."""
    reranker_model: str = DEFAULT_RERANKER_MODEL
    reranker_url: str | None = None
    reranker_api_key: str | None = field(default=None, repr=False)
    embedding_served_name: str | None = None
    """The name the embedding server serves the model under; None: asked from the server."""
    reranker_served_name: str | None = None
    """The name the reranker server serves the model under; None: asked from the server."""
    max_concurrency: int = 4
    """Requests in flight at once to a vLLM server, per call (raise it for a fleet behind one URL)."""
    max_batch: int = 32
    """Sequences per request to a vLLM server."""
    pages: bool = False
    """Index PDF pages and image files as images too, with the Qwen3-VL models (``--pages``); the default models
    become Qwen3-VL-Embedding-2B and Qwen3-VL-Reranker-2B. The collection records it."""
    server_requests: int | None = field(default=None, repr=False, compare=False)
    """Deprecated: the old name of ``max_concurrency``."""
    server_batch: int | None = field(default=None, repr=False, compare=False)
    """Deprecated: the old name of ``max_batch``."""

    def __post_init__(self) -> None:
        for old, new in RENAMED.items():
            value = getattr(self, old)
            if value is not None:
                warnings.warn(
                    f"RagConfig({old}=...) is now {new}=..., the name the models' options use",
                    DeprecationWarning,
                    stacklevel=3,
                )
                object.__setattr__(self, new, value)
                object.__setattr__(self, old, None)
        if self.pages:  # the text models cannot read pages: their defaults mean the VL ones here
            from qwen3_retrieval.vl.prompts import DEFAULT_VL_EMBEDDING_MODEL, DEFAULT_VL_RERANKER_MODEL

            if self.embedding_model == DEFAULT_EMBEDDING_MODEL:
                object.__setattr__(self, "embedding_model", DEFAULT_VL_EMBEDDING_MODEL)
            if self.reranker_model == DEFAULT_RERANKER_MODEL:
                object.__setattr__(self, "reranker_model", DEFAULT_VL_RERANKER_MODEL)

    def store(self) -> PassageStore:
        """Open the collection (one-line error if Milvus cannot be reached)."""
        return PassageStore(self.uri, self.collection, token=self.token, timeout=self.milvus_timeout)

    def model_id(self) -> str:
        """The embedding model as recorded: a local folder's absolute path, or the hub id."""
        path = Path(self.embedding_model).expanduser()
        return str(path.resolve()) if path.is_dir() else self.embedding_model

    def embedder(self, dimensions: int | None) -> Any:
        """The embedding model, cut to ``dimensions`` (None: full size)."""
        from qwen3_retrieval import Qwen3Embedder, Qwen3VLEmbedder

        model = Qwen3VLEmbedder if self.pages else Qwen3Embedder
        return model(
            self.embedding_model,
            dimensions=dimensions,
            **self._engine(self.embedding_url, self.embedding_api_key, self.embedding_served_name),
        )

    def reranker(self) -> Any:
        """The reranking model."""
        from qwen3_retrieval import Qwen3Reranker, Qwen3VLReranker

        model = Qwen3VLReranker if self.pages else Qwen3Reranker
        return model(
            self.reranker_model, **self._engine(self.reranker_url, self.reranker_api_key, self.reranker_served_name)
        )

    def _engine(self, url: str | None, api_key: str | None, served: str | None) -> dict[str, Any]:
        if url is None:
            return {"device": self.device}
        return {
            "base_url": url,
            "api_key": api_key,
            "served_model_name": served,
            "max_concurrency": self.max_concurrency,
            "max_batch": self.max_batch,
        }


def passage_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` that sizes passages (a one-line :class:`RagError` if it cannot be loaded)."""
    from qwen3_retrieval.loading import load_error, loading_lock

    try:
        with loading_lock():  # another thread may be loading a model: transformers' loading is not thread-safe
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise RagError(str(load_error(model, err))) from err
