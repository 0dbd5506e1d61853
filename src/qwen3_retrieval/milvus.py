"""Milvus vector stores for both frameworks, set up so that they work on Milvus Lite 3 out of the box.

``pip install "qwen3-retrieval[all]"`` resolves to langchain-milvus 0.3.x with pymilvus 2.6.x (llama-index's
Milvus store caps pymilvus below 3). That langchain-milvus reaches the collection through pymilvus' ORM, which
pymilvus >= 2.6.11 no longer registers for its ``MilvusClient``. The store opens an existing collection while it
is being constructed, so the connection must be registered before that (else a second run in the same folder
fails with "should create connection first"): :func:`langchain_store` builds a subclass that registers it first.
pymilvus 2.6 marks the ORM deprecated; the warnings that this use of it causes are ours to silence, since the
user can do nothing about them. For hybrid search it also spells out the sparse index and search parameters that
Milvus Lite 3 accepts.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

DENSE_INDEX = {"index_type": "FLAT", "metric_type": "COSINE"}
SPARSE_INDEX = {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25", "params": {}}


def langchain_store(
    embeddings: Any,
    *,
    uri: str = "./milvus_langchain.db",
    collection_name: str = "qwen3_langchain",
    token: str | None = None,
    hybrid: bool = False,
    drop_old: bool = False,
    **kwargs: Any,
) -> Any:
    """Return a ``langchain_milvus.Milvus`` store using ``embeddings``, cosine metric, ready for inserts.

    Args:
        embeddings: A LangChain ``Embeddings`` (e.g. :class:`qwen3_retrieval.langchain.Qwen3Embeddings`).
        uri: A Milvus Lite path, or ``http(s)://host:19530`` for a server.
        collection_name: The collection.
        token: Milvus or Zilliz Cloud token.
        hybrid: Add a BM25 full-text field next to the dense vectors; searches then fuse both.
        drop_old: Drop an existing collection of that name first.
        **kwargs: Passed on to ``langchain_milvus.Milvus``.
    """
    from langchain_milvus import BM25BuiltInFunction

    connection = {"uri": uri, **({"token": token} if token else {})}
    options: dict[str, Any] = {
        "collection_name": collection_name,
        "connection_args": connection,
        "consistency_level": "Strong",
        "drop_old": drop_old,
        "auto_id": True,
    }
    if hybrid:
        options.update(
            builtin_function=BM25BuiltInFunction(),
            vector_field=["dense", "sparse"],
            index_params=[DENSE_INDEX, SPARSE_INDEX],
            search_params=[{"metric_type": "COSINE", "params": {}}, {"metric_type": "BM25", "params": {}}],
        )
    else:
        options["index_params"] = DENSE_INDEX
    options.update(kwargs)
    # Every call, not once: warnings.catch_warnings blocks (pytest wraps each test in one) reset the filter list.
    _quiet_pymilvus_notices()
    return _langchain_milvus_class()(embedding_function=embeddings, **options)


@functools.cache
def _langchain_milvus_class() -> type:
    """``langchain_milvus.Milvus`` with pymilvus' ORM connection registered before the collection is opened."""
    from langchain_milvus import Milvus

    class Qwen3Milvus(Milvus):
        """``langchain_milvus.Milvus`` that also opens an existing collection (see the module docstring)."""

        def _init(self, *args: Any, **kwargs: Any) -> Any:
            _register_orm_connection(getattr(self, "alias", None), self._connection_args)
            return super()._init(*args, **kwargs)

    return Qwen3Milvus


def _register_orm_connection(alias: str | None, connection: dict[str, Any]) -> None:
    if alias is None:
        return  # newer langchain-milvus no longer uses the ORM
    try:
        from pymilvus import connections
    except ImportError:  # pragma: no cover - pymilvus 3 dropped the ORM
        return
    if not connections.has_connection(alias):
        connections.connect(alias=alias, **connection)


def _quiet_pymilvus_notices() -> None:
    # Only what langchain-milvus (and the connection above) cause and the user cannot act on: pymilvus' notices
    # about its ORM, and the connection coroutine that langchain-milvus' drop() creates and never awaits.
    # Any other warning still shows.
    warnings.filterwarnings(
        "ignore",
        message=r".*ORM-style PyMilvus API",
        category=FutureWarning,
        module=r"(langchain_milvus|qwen3_retrieval)\.",
    )
    warnings.filterwarnings(
        "ignore", message=r"coroutine 'AsyncMilvusClient\.", category=RuntimeWarning, module=r"langchain_milvus\."
    )


def llama_index_store(
    dim: int,
    *,
    uri: str = "./milvus_llamaindex.db",
    collection_name: str = "qwen3_llamaindex",
    token: str | None = None,
    hybrid: bool = False,
    overwrite: bool = False,
    **kwargs: Any,
) -> Any:
    """Return a ``MilvusVectorStore`` for ``dim``-sized vectors with the cosine metric.

    With ``hybrid=True`` it adds Milvus' built-in BM25 full-text field; query with
    ``vector_store_query_mode="hybrid"`` (results fused by reciprocal rank, the store's default).
    """
    from llama_index.vector_stores.milvus import MilvusVectorStore

    return MilvusVectorStore(
        uri=uri,
        token=token or "",
        collection_name=collection_name,
        dim=dim,
        overwrite=overwrite,
        similarity_metric="COSINE",
        consistency_level="Strong",
        enable_sparse=hybrid,
        **kwargs,
    )
