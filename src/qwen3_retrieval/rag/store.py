"""The Milvus collection the command indexes into: dense vectors plus text, source and heading.

A local path as URI runs embedded Milvus Lite; ``http(s)://…`` reaches a Milvus server or Zilliz Cloud.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.passages import Passage


@dataclass(frozen=True)
class Hit:
    """A passage found by search."""

    text: str
    source: str
    heading: str


def _literal(value: str) -> str:
    # A JSON string is a valid Milvus string literal with the quotes and backslashes escaped.
    return json.dumps(value)


class PassageStore:
    """A Milvus collection of passages; see the module docstring."""

    def __init__(self, uri: str, collection: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.collection = collection
        is_server = uri.startswith(("http://", "https://", "tcp://", "grpc://"))
        try:
            self.client = MilvusClient(uri=uri, token=token or "", timeout=timeout)
        except MilvusException as err:
            where = "the Milvus server at " + uri if is_server else "Milvus Lite at " + uri
            raise RagError(f"cannot reach {where}: {err.message}") from err
        except Exception as err:  # grpc and OS errors from an unreachable server or a bad path
            raise RagError(f"cannot open Milvus at {uri}: {type(err).__name__}: {err}") from err

    def exists(self) -> bool:
        """Whether the collection exists; if it does, it is loaded for search."""
        if not self.client.has_collection(self.collection):
            return False
        # A collection created by an earlier process starts released; queries need it loaded.
        self.client.load_collection(self.collection)
        return True

    def dimension(self) -> int:
        """The vector size the collection was created with."""
        fields = self.client.describe_collection(self.collection)["fields"]
        return int(next(f for f in fields if f["name"] == "vector")["params"]["dim"])

    def ensure(self, dimension: int) -> None:
        """Create the collection for ``dimension``-sized vectors, or check an existing one has that size."""
        if self.exists():
            found = self.dimension()
            if found != dimension:
                raise RagError(
                    f"collection {self.collection!r} holds {found}-dimensional vectors but the embedding model "
                    f"gives {dimension}; use --dimensions {found} or another --collection"
                )
            return
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("heading", DataType.VARCHAR, max_length=4096)
        schema.add_field("file_hash", DataType.VARCHAR, max_length=64)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="AUTOINDEX", metric_type="COSINE")
        self.client.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong")

    def is_current(self, source: str, file_hash: str, n_passages: int) -> bool:
        """Whether ``source`` is stored completely with this content hash (then re-indexing it is skipped)."""
        rows = self.client.query(self.collection, filter=f"source == {_literal(source)}", output_fields=["file_hash"])
        return len(rows) == n_passages and all(r["file_hash"] == file_hash for r in rows)

    def replace(self, passages: Sequence[Passage], vectors: np.ndarray, file_hash: str) -> None:
        """Store a file's passages, then drop what an older version of the file left.

        Ids are stable (source and position), so an interrupted run leaves a usable collection and running
        again overwrites instead of duplicating.
        """
        if not passages:
            return
        source = passages[0].source
        prefix = hashlib.sha1(source.encode()).hexdigest()[:24]
        rows: list[dict[str, Any]] = [
            {
                "id": f"{prefix}-{i}",
                "vector": vector.tolist(),
                "text": p.text[:65535],
                "source": source,
                "heading": p.heading[:4096],
                "file_hash": file_hash,
            }
            for i, (p, vector) in enumerate(zip(passages, vectors))
        ]
        self.client.upsert(self.collection, rows)
        self.client.delete(
            self.collection, filter=f"source == {_literal(source)} and file_hash != {_literal(file_hash)}"
        )

    def count(self) -> int:
        """How many passages the collection holds."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def search(self, vector: np.ndarray, limit: int) -> list[Hit]:
        """Return the ``limit`` passages nearest to ``vector`` (cosine)."""
        result = self.client.search(
            self.collection,
            data=[vector.tolist()],
            anns_field="vector",
            limit=limit,
            output_fields=["text", "source", "heading"],
            search_params={"metric_type": "COSINE"},
        )
        return [Hit(h["entity"]["text"], h["entity"]["source"], h["entity"]["heading"]) for h in result[0]]
