"""The Milvus collection ``qwen3-rag`` indexes into: a faithful mirror of the indexed folders.

A passage row holds its dense vector, its text (also analysed by Milvus' built-in BM25 function into a sparse
vector, on Milvus Lite and on a server alike), the id of the folder ("root") it came from, its path relative to
that root, its heading path and the file's content hash. A second, small collection (``<name>_meta``) records
the settings the passages were built with (embedding model, dimensions, splitting) and where each root was last
seen, so a moved or renamed folder keeps its id and its passages.

A local path as URI runs embedded Milvus Lite; ``http(s)://…`` reaches a Milvus server or Zilliz Cloud.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.extras import require
from qwen3_retrieval.rag.types import Hit, Passage
from qwen3_retrieval.redaction import mask, redact_url, url_secrets

SCHEMA_VERSION = 2
TEXT_BYTES = 65535  # Milvus' VARCHAR limits count UTF-8 bytes, not characters
PATH_BYTES = 4096
# Upserts go out in pieces well under gRPC's message limit (64 MB on Milvus Lite and default servers).
UPSERT_BYTES = 8 * 2**20
QUERY_ROWS = 16384  # the most rows one query returns


@dataclass(frozen=True)
class StoredFile:
    """A file the collection holds completely: its key, content hash and number of passages."""

    key: str
    file_hash: str
    parts: int


def fit_bytes(text: str, limit: int) -> str:
    """Return ``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


def _literal(value: str) -> str:
    # A JSON string is a valid Milvus string literal with the quotes and backslashes escaped.
    return json.dumps(value)


def is_server_uri(uri: str) -> bool:
    """Whether ``uri`` names a Milvus server (or Zilliz Cloud) rather than a Milvus Lite file."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def _stored_text(passage: Passage, pages: bool = False) -> dict[str, str]:
    """A passage's text fields as a row stores them: cut to Milvus' byte limits (one place for the limits).

    A ``--pages`` collection has one more field, ``image`` (see :attr:`Passage.image`).
    """
    fields = {
        "text": fit_bytes(passage.text, TEXT_BYTES),
        "heading": fit_bytes(passage.heading, 1024),
        "location": fit_bytes(passage.location, 64),
    }
    return {**fields, "image": fit_bytes(passage.image, 64)} if pages else fields


def _file_key(root: str, path: str) -> str:
    return hashlib.sha1(f"{root}\0{path}".encode()).hexdigest()[:40]


class PassageStore:
    """A Milvus collection of passages and its settings; see the module docstring."""

    def __init__(self, uri: str, collection: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        pymilvus = require("pymilvus", "rag", "qwen3-rag's Milvus collection")
        self.collection, self.meta = collection, f"{collection}_meta"
        self.uri = uri
        self.pages = False  # a --pages collection (with the image field): known once opened or created
        self.is_server = is_server = is_server_uri(uri)
        secrets = [token, *url_secrets(uri)]
        try:
            # A server gets a connection of its own, closed with the store: pymilvus otherwise shares one per
            # address across clients and keeps it after close(), and a connection left idle between runs is sent
            # GOAWAY ("too_many_pings") by a server that limits keepalive pings, which failed the next store.
            self.client = pymilvus.MilvusClient(uri=uri, token=token or "", timeout=timeout, dedicated=is_server)
            # pymilvus 2.6.17 connects on first use: ask once here, so an unreachable server is reported as such.
            self.client.list_collections()
        except pymilvus.exceptions.MilvusException as err:
            if is_server:
                message = f"cannot reach the Milvus server at {redact_url(uri)}: {err.message}"
            else:  # the file is there (a missing one is created): what it holds cannot be read
                message = (
                    f"Milvus Lite cannot open {uri}: {err.message}; if its files are damaged, move it away and "
                    "index again, or restore a copy"
                )
            raise RagError(mask(message, secrets)) from None
        except Exception as err:  # grpc and OS errors from an unreachable server or a bad path
            message = f"cannot open Milvus at {redact_url(uri)}: {type(err).__name__}: {err}"
            raise RagError(mask(message, secrets)) from None

    def close(self) -> None:
        """Let go of the collection, and of a Milvus Lite file, which stays locked while this process serves it.

        pymilvus never stops the embedded server it starts for a ``.db`` file, so another process could not
        open the file while this one lives; other clients of the same file in this process reconnect.
        """
        self.client.close()
        if not self.is_server:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def __enter__(self) -> PassageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the collection and its settings ---------------------------------------------------------------------

    def open(self) -> dict[str, Any] | None:
        """The settings of the complete collection, which is then loaded for search; None if there is none yet.

        None also stands for a store left half-created by a run killed while creating it: settings without a
        passage collection, which :meth:`create` completes. A passage collection is only ever created after its
        settings are recorded, so one whose settings cannot be read is never taken for half-created, even when
        it looks empty (a restarting server can briefly show both a collection and no records).

        Raises:
            RagError: The passage collection exists but the settings it was built with cannot be read (it is
                damaged), or it was built by an older qwen3-rag; either way ``--recreate`` rebuilds it.
        """
        has_passages = self.client.has_collection(self.collection)
        has_meta = self.client.has_collection(self.meta)
        if has_passages:
            fields = {f["name"] for f in self.client.describe_collection(self.collection)["fields"]}
            if "sparse" not in fields:
                raise RagError(
                    f"collection {self.collection!r} was built by an older qwen3-rag (no BM25 index); index again "
                    "with --recreate to rebuild it"
                )
            self.client.load_collection(self.collection)  # one created by an earlier process starts released
        settings = None
        if has_meta:
            self.client.load_collection(self.meta)
            settings = self._meta_get("settings")
        if settings and has_passages:
            if settings.get("schema") != SCHEMA_VERSION:  # what the passages hold, and how, is not what we read
                raise RagError(
                    f"collection {self.collection!r} was built by another version of qwen3-rag (schema "
                    f"{settings.get('schema')}, this one reads {SCHEMA_VERSION}); index again with --recreate to "
                    "rebuild it"
                )
            self.pages = bool(settings.get("pages"))
            return dict(settings)
        if has_passages:
            missing = "its settings collection" if not has_meta else "the record of its settings"
            held = "holds passages" if self.count() > 0 else "exists"
            raise RagError(
                f"collection {self.collection!r} at {redact_url(self.uri)} is damaged: it {held} but {missing} "
                "is gone, so it cannot be checked against this run (a Milvus server that is still starting can "
                "show this briefly: try again); index again with --recreate to rebuild it"
            )
        return None

    def exists(self) -> bool:
        """Whether the collection is complete (see :meth:`open`); if it is, it is loaded for search."""
        return self.open() is not None

    def settings(self) -> dict[str, Any]:
        """The settings the collection was built with (embedding model, dimensions, splitting)."""
        return self._meta_get("settings") or {}

    def create(self, settings: dict[str, Any]) -> None:
        """Create the collection for ``settings["dimensions"]``-sized vectors and record ``settings``.

        Safe to call on what a killed run left (see :meth:`open`): the settings are recorded before the passage
        collection exists, so a passage collection is only ever created under recorded settings.

        Raises:
            RagError: The passage collection exists already (another run created it since :meth:`open`).
        """
        from pymilvus import DataType, Function, FunctionType

        if not self.client.has_collection(self.meta):
            meta = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
            meta.add_field("value", DataType.VARCHAR, max_length=TEXT_BYTES)
            meta.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field in every collection
            meta_index = self.client.prepare_index_params()
            meta_index.add_index("unused", index_type="AUTOINDEX", metric_type="L2")
            self.client.create_collection(self.meta, schema=meta, index_params=meta_index, consistency_level="Strong")
        self.client.load_collection(self.meta)
        if self.client.has_collection(self.collection):  # never replaced: open() refuses one without settings
            raise RagError(
                f"collection {self.collection!r} at {redact_url(self.uri)} was created by another run meanwhile; "
                "run this one again"
            )
        self._meta_set("settings", {**settings, "schema": SCHEMA_VERSION})

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(settings["dimensions"]))
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_BYTES, enable_analyzer=True)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("root", DataType.VARCHAR, max_length=64)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_BYTES)
        schema.add_field("file_key", DataType.VARCHAR, max_length=64)
        schema.add_field("heading", DataType.VARCHAR, max_length=1024)
        schema.add_field("location", DataType.VARCHAR, max_length=64)
        self.pages = bool(settings.get("pages"))
        if self.pages:  # only here: collections built without --pages keep the schema they have
            schema.add_field("image", DataType.VARCHAR, max_length=64)
        schema.add_field("file_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("parts", DataType.INT64)
        schema.add_function(
            Function(
                name="bm25", input_field_names=["text"], output_field_names=["sparse"], function_type=FunctionType.BM25
            )
        )
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="AUTOINDEX", metric_type="COSINE")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self.client.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong")

    def drop(self) -> None:
        """Remove the collection and its settings (``--recreate``)."""
        for name in (self.collection, self.meta):
            if self.client.has_collection(name):
                self.client.drop_collection(name)

    def _meta_get(self, key: str) -> Any:
        rows = self.client.query(self.meta, filter=f"key == {_literal(key)}", output_fields=["value"])
        return json.loads(rows[0]["value"]) if rows else None

    def _meta_set(self, key: str, value: Any) -> None:
        self.client.upsert(self.meta, [{"key": key, "value": json.dumps(value), "unused": [0.0, 0.0]}])

    # --- roots: the indexed folders ----------------------------------------------------------------------------

    def roots(self) -> dict[str, str]:
        """Every root id with the folder it was last indexed from."""
        rows = self.client.query(self.meta, filter='key like "root:%"', output_fields=["key", "value"])
        return {row["key"].removeprefix("root:"): json.loads(row["value"])["path"] for row in rows}

    def set_root(self, root: str, folder: str) -> None:
        """Record that ``root`` was last indexed from ``folder``."""
        self._meta_set(f"root:{root}", {"path": folder})

    # --- files and passages ------------------------------------------------------------------------------------

    def files(self, root: str) -> dict[str, StoredFile]:
        """Every file completely stored under ``root``, by path relative to the root.

        A file counts as stored once all its passages are in and its record is written, which happens last:
        a run interrupted in between leaves the file to be indexed again.
        """
        found: dict[str, StoredFile] = {}
        # Queries return at most QUERY_ROWS rows; file keys are hex, so one query per first digit.
        for digit in "0123456789abcdef":
            rows = self.client.query(
                self.meta, filter=f'key like "file:{root}:{digit}%"', output_fields=["key", "value"], limit=QUERY_ROWS
            )
            for row in rows:
                record = json.loads(row["value"])
                found[record["path"]] = StoredFile(row["key"].rsplit(":", 1)[1], record["hash"], record["parts"])
        return found

    def forget_files(self, root: str, keys: Sequence[str]) -> None:
        """Remove the records of these files (not their passages): the next run indexes them again."""
        for start in range(0, len(keys), 512):
            records = [f"file:{root}:{k}" for k in keys[start : start + 512]]
            self.client.delete(self.meta, filter=f"key in {json.dumps(records)}")

    def passage_counts(self) -> dict[str, int]:
        """How many passages the collection holds for each file key (reads every row's key: for repairs only)."""
        counts: dict[str, int] = {}
        iterator_log = logging.getLogger("pymilvus.orm.iterator")
        level = iterator_log.level
        iterator_log.setLevel(logging.ERROR)  # Milvus Lite has no MVCC timestamp to give, and pymilvus says so
        try:
            rows = self.client.query_iterator(self.collection, batch_size=4096, filter="", output_fields=["file_key"])
            while batch := rows.next():
                for row in batch:
                    counts[row["file_key"]] = counts.get(row["file_key"], 0) + 1
            rows.close()
        finally:
            iterator_log.setLevel(level)
        return counts

    def put_file(self, root: str, path: str, passages: Sequence[Passage], vectors: np.ndarray, file_hash: str) -> None:
        """Store one file's passages, drop whatever an older version of the file left, then record the file.

        Ids are stable (root, path, position), so an interrupted run leaves a usable collection and running it
        again overwrites instead of duplicating. Upserts are cut to stay under Milvus' message size.
        """
        key = _file_key(root, path)
        rows = [
            {
                "id": f"{key}-{i}",
                "vector": vector.tolist(),
                **_stored_text(p, self.pages),
                "root": root,
                "path": fit_bytes(path, PATH_BYTES),
                "file_key": key,
                "file_hash": file_hash,
                "parts": len(passages),
            }
            for i, (p, vector) in enumerate(zip(passages, vectors, strict=True))
        ]
        for piece in upsert_pieces(rows, vectors.shape[1] * 4 if len(vectors) else 0):
            self.client.upsert(self.collection, piece)
        stale = f"file_key == {_literal(key)} and (file_hash != {_literal(file_hash)} or parts != {len(passages)})"
        self.client.delete(self.collection, filter=stale)
        self._meta_set(f"file:{root}:{key}", {"path": path, "hash": file_hash, "parts": len(passages)})

    def stored_vectors(self, key: str, passages: Sequence[Passage]) -> np.ndarray | None:
        """The vectors stored for the file ``key`` if it holds exactly ``passages`` (same texts, in order).

        This is how a renamed or copied file reuses what was embedded for it: the caller finds a stored file
        with the same content hash, and the texts are compared here so that a file changed since (or split
        otherwise) is embedded again instead. None when anything differs.
        """
        if not passages or len(passages) > QUERY_ROWS:
            return None
        fields = ["id", "text", "heading", "location", "vector", *(["image"] if self.pages else [])]
        rows = self.client.query(self.collection, filter=f"file_key == {_literal(key)}", output_fields=fields,
                                 limit=QUERY_ROWS)  # fmt: skip
        if len(rows) != len(passages):
            return None
        rows.sort(key=lambda row: int(row["id"].rsplit("-", 1)[1]))
        for row, p in zip(rows, passages, strict=True):
            if any(row[name] != value for name, value in _stored_text(p, self.pages).items()):
                return None
        return np.asarray([row["vector"] for row in rows], dtype=np.float32)

    def remove_files(self, root: str, keys: Sequence[str]) -> None:
        """Remove every passage and the record of the files under ``root`` with these keys."""
        for start in range(0, len(keys), 512):
            batch = list(keys[start : start + 512])
            self.client.delete(self.collection, filter=f"file_key in {json.dumps(batch)}")
            self.client.delete(self.meta, filter=f"key in {json.dumps([f'file:{root}:{k}' for k in batch])}")

    def count(self) -> int:
        """How many passages the collection holds."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # --- search ------------------------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, question: str, limit: int, *, mode: str) -> list[Hit]:
        """Return the ``limit`` best passages: dense cosine alone, or fused with BM25 by reciprocal rank."""
        from pymilvus import AnnSearchRequest, RRFRanker

        fields = ["text", "root", "path", "heading", "location", *(["image"] if self.pages else [])]
        dense = {"data": [vector.tolist()], "anns_field": "vector", "param": {"metric_type": "COSINE"}, "limit": limit}
        if mode == "dense":
            result = self.client.search(
                self.collection,
                data=dense["data"],
                anns_field="vector",
                limit=limit,
                output_fields=fields,
                search_params=dense["param"],
            )
        else:
            requests = [
                AnnSearchRequest(**dense),
                AnnSearchRequest(data=[question], anns_field="sparse", param={"metric_type": "BM25"}, limit=limit),
            ]
            result = self.client.hybrid_search(
                self.collection, reqs=requests, ranker=RRFRanker(60), limit=limit, output_fields=fields
            )
        return [Hit(*(h["entity"][f] for f in fields)) for h in result[0]]


def upsert_pieces(rows: list[dict[str, Any]], vector_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Cut rows into upserts that each stay under ``UPSERT_BYTES``, Milvus' message limit with room to spare."""
    piece: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_bytes = vector_bytes + len(row["text"].encode()) + len(row["path"]) + len(row["heading"]) + 256
        if piece and size + row_bytes > UPSERT_BYTES:
            yield piece
            piece, size = [], 0
        piece.append(row)
        size += row_bytes
    if piece:
        yield piece
