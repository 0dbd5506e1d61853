"""The Milvus collection ``qwen3-rag`` indexes into: a faithful mirror of the indexed folders.

A passage row holds its dense vector, its text (also analysed by Milvus' built-in BM25 function into a sparse
vector, on Milvus Lite and on a server alike), the id of the folder ("root") it came from, its path relative to
that root, its heading path and the file's content hash. A second, small collection (``<name>_meta``) records
the settings the passages were built with (embedding model, dimensions, splitting) and where each root was last
seen, so a moved or renamed folder keeps its id and its passages.

Each file has a record there too, written *before* its passages as pending and marked done after them (and
marked pending again before a removal deletes them). Whatever point a run is killed at, every passage stored
belongs to a recorded file, so the next run finds it: a pending file still in its folder is indexed again, one
gone from it is removed, and no passage of a missing file survives. Passage ids are ``<file key>-<position>``;
a record keeps the highest position ever written (its span), so stale passages are deleted by primary key.

Within a process, a store's searches and its writes of passages take turns (:class:`_Turns`): a search sees the
collection as it was before or after each batch of files, never with part of a batch written, on Milvus Lite and
on a server alike (without the turns, a search on a server during an index run was once seen ranking neither as
before nor as after it).

A local path as URI runs embedded Milvus Lite; ``http(s)://…`` reaches a Milvus server or Zilliz Cloud.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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
    """A file's record: its key, content hash, number of passages, and whether they are all stored."""

    key: str
    file_hash: str
    parts: int
    span: int
    """Passages ``<key>-0`` up to ``<key>-<span - 1>`` may be stored (an interrupted write can leave more than
    ``parts``)."""
    done: bool
    """All its passages are stored; False while a write or a removal is under way, or after one was killed."""


class FileWrite(NamedTuple):
    """One file's passages to store: under ``root`` at ``path``, replacing what ``old`` records, if anything."""

    root: str
    path: str
    passages: Sequence[Passage]
    vectors: np.ndarray
    file_hash: str
    old: StoredFile | None


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
        self.wrote_passages = False  # by this object: a new file that holds none can be removed on an error
        self.is_server = is_server = is_server_uri(uri)
        self._turns = _Turns()
        secrets = [token, *url_secrets(uri)]
        if not is_server:
            _hold_lite(uri)
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
            self._let_go()
            raise RagError(mask(message, secrets)) from None
        except Exception as err:  # grpc and OS errors from an unreachable server or a bad path
            self._let_go()
            message = f"cannot open Milvus at {redact_url(uri)}: {type(err).__name__}: {err}"
            raise RagError(mask(message, secrets)) from None

    def close(self) -> None:
        """Let go of the collection, and of a Milvus Lite file once no other store of this process uses it.

        A Milvus Lite file is served by one in-process server, which holds the file's lock: it is stopped when
        the last store of the file closes, so that another process can open the file.
        """
        self.client.close()
        self._let_go()

    def _let_go(self) -> None:
        if not self.is_server:
            _let_go_lite(self.uri)

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
        """Every file recorded under ``root``, by path relative to the root; see :attr:`StoredFile.done`."""
        found: dict[str, StoredFile] = {}
        # Queries return at most QUERY_ROWS rows; file keys are hex, so one query per first digit.
        for digit in "0123456789abcdef":
            rows = self.client.query(
                self.meta, filter=f'key like "file:{root}:{digit}%"', output_fields=["key", "value"], limit=QUERY_ROWS
            )
            for row in rows:
                record = json.loads(row["value"])
                parts = record["parts"]
                found[record["path"]] = StoredFile(
                    row["key"].rsplit(":", 1)[1],
                    record["hash"],
                    parts,
                    record.get("span", parts),
                    record.get("done", True),  # written before records had a state: complete
                )
        return found

    def _set_records(self, root_files: Sequence[tuple[str, str, StoredFile]]) -> None:
        """Write the records of ``(root, path, file)`` triples, in one upsert per 512."""
        rows = [
            {
                "key": f"file:{root}:{f.key}",
                "value": json.dumps(
                    {"path": path, "hash": f.file_hash, "parts": f.parts, "span": f.span, "done": f.done}
                ),
                "unused": [0.0, 0.0],
            }
            for root, path, f in root_files
        ]
        for start in range(0, len(rows), 512):
            self.client.upsert(self.meta, rows[start : start + 512])

    def _delete_ids(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 4096):
            self.client.delete(self.collection, ids=ids[start : start + 4096])

    def forget_files(self, root: str, files: dict[str, StoredFile]) -> None:
        """Mark ``files`` (by path) pending: the next run indexes them again, or removes them if they are gone."""
        self._set_records([(root, path, _pending(f)) for path, f in files.items()])

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

    def put_files(self, files: Sequence[FileWrite]) -> None:
        """Store files' passages: records marked pending, passages upserted, stale ones deleted, records done.

        Ids are stable (root, path, position), so a run interrupted anywhere leaves pending records that the
        next run finishes or removes (see the module docstring). A batch of files costs four calls, however
        many files it holds (upserts are cut to stay under Milvus' message size).
        """
        if not files:
            return
        pending, done, rows, stale = [], [], [], []
        for f in files:
            key = _file_key(f.root, f.path)
            parts = len(f.passages)
            span = max(parts, f.old.span if f.old is not None else 0)
            pending.append((f.root, f.path, StoredFile(key, f.file_hash, parts, span, done=False)))
            done.append((f.root, f.path, StoredFile(key, f.file_hash, parts, parts, done=True)))
            stale += [f"{key}-{i}" for i in range(parts, span)]
            rows += [
                {
                    "id": f"{key}-{i}",
                    "vector": vector.tolist(),
                    **_stored_text(p, self.pages),
                    "root": f.root,
                    "path": fit_bytes(f.path, PATH_BYTES),
                    "file_key": key,
                    "file_hash": f.file_hash,
                    "parts": parts,
                }
                for i, (p, vector) in enumerate(zip(f.passages, f.vectors, strict=True))
            ]
        self.wrote_passages = True
        with self._turns.writing():
            self._set_records(pending)
            vector_bytes = max((f.vectors.shape[1] * 4 for f in files if len(f.vectors)), default=0)
            for piece in upsert_pieces(rows, vector_bytes):
                self.client.upsert(self.collection, piece)
            self._delete_ids(stale)
            self._set_records(done)

    def stored_vectors(self, source: StoredFile, passages: Sequence[Passage]) -> np.ndarray | None:
        """The vectors stored for the file ``source`` if it holds exactly ``passages`` (same texts, in order).

        This is how a renamed or copied file reuses what was embedded for it: the caller finds a stored file
        with the same content hash, and the texts are compared here so that a file changed since (or split
        otherwise) is embedded again instead. None when anything differs. Read by primary key.
        """
        if not passages or not source.done or source.parts != len(passages) or len(passages) > QUERY_ROWS:
            return None
        fields = ["id", "text", "heading", "location", "vector", *(["image"] if self.pages else [])]
        rows = self.client.get(
            self.collection, ids=[f"{source.key}-{i}" for i in range(len(passages))], output_fields=fields
        )
        if len(rows) != len(passages):
            return None
        rows.sort(key=lambda row: int(row["id"].rsplit("-", 1)[1]))
        for row, p in zip(rows, passages, strict=True):
            if any(row[name] != value for name, value in _stored_text(p, self.pages).items()):
                return None
        return np.asarray([row["vector"] for row in rows], dtype=np.float32)

    def remove_files(self, root: str, files: dict[str, StoredFile]) -> None:
        """Remove the passages and records of ``files`` (by path) under ``root``, by primary key.

        The records are marked pending first, so that a run killed in between leaves them for the next run to
        remove, and a reader never counts passages of a file half removed as missing.
        """
        entries = list(files.items())
        for start in range(0, len(entries), 512):
            batch = entries[start : start + 512]
            with self._turns.writing():
                self._set_records([(root, path, _pending(f)) for path, f in batch if f.done])
                self._delete_ids([f"{f.key}-{i}" for _, f in batch for i in range(f.span)])
                self.client.delete(self.meta, ids=[f"file:{root}:{f.key}" for _, f in batch])

    def count(self) -> int:
        """How many passages the collection holds."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # --- search ------------------------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, question: str, limit: int, *, mode: str) -> list[Hit]:
        """Return the ``limit`` best passages: dense cosine alone, or fused with BM25 by reciprocal rank."""
        fields = ["text", "root", "path", "heading", "location", *(["image"] if self.pages else [])]
        dense = {"data": [vector.tolist()], "anns_field": "vector", "param": {"metric_type": "COSINE"}, "limit": limit}
        with self._turns.reading():
            result = self._search(dense, question, limit, mode=mode, fields=fields)
        return [Hit(*(h["entity"][f] for f in fields)) for h in result[0]]

    def _search(self, dense: dict[str, Any], question: str, limit: int, *, mode: str, fields: list[str]) -> Any:
        from pymilvus import AnnSearchRequest, RRFRanker

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
        return result


class _Turns:
    """Searches share a store; a write of passages has it alone, and a waiting write goes before new searches."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._searching = 0
        self._writing = False
        self._writes_waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._writing and not self._writes_waiting)
            self._searching += 1
        try:
            yield
        finally:
            with self._changed:
                self._searching -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._changed:
            self._writes_waiting += 1
            self._changed.wait_for(lambda: not self._writing and not self._searching)
            self._writes_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()


def _pending(f: StoredFile) -> StoredFile:
    return StoredFile(f.key, f.file_hash, f.parts, f.span, done=False)


# --- Milvus Lite: one in-process server per file, shared by this process's stores ------------------------------

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def _hold_lite(uri: str) -> None:
    """Count one more store of the Milvus Lite file ``uri``, starting its server for the first one."""
    path = os.path.abspath(Path(uri).expanduser())
    with _lite_lock:
        if not _lite_users.get(path):
            _start_lite(uri, path)
        _lite_users[path] = _lite_users.get(path, 0) + 1


def _let_go_lite(uri: str) -> None:
    """Count one store of ``uri`` fewer; the last one stops its server, which unlocks the file."""
    from milvus_lite.server_manager import server_manager_instance

    path = os.path.abspath(Path(uri).expanduser())
    with _lite_lock:
        users = _lite_users.pop(path, 0) - 1
        if users > 0:
            _lite_users[path] = users
            return
        server_manager_instance.release_server(path)


def _start_lite(uri: str, path: str) -> None:
    """Start (or find) the server of the Milvus Lite file at ``path``; a one-line error if it cannot open it."""
    from milvus_lite.server_manager import server_manager_instance

    if not Path(path).parent.is_dir():
        return  # pymilvus says which folder is missing
    failures: list[logging.LogRecord] = []
    log = logging.getLogger("milvus_lite.server_manager")
    keep = log.propagate
    catch = _Catch(failures)
    log.addHandler(catch)
    log.propagate = False  # its traceback is not for the user: the failure is said in one line below
    try:
        started = server_manager_instance.start_and_get_uri(path)
    finally:
        log.removeHandler(catch)
        log.propagate = keep
    if started is not None:
        return
    error = failures[-1].exc_info[1] if failures and failures[-1].exc_info else None
    if type(error).__name__ == "DataDirLockedError" or _locked(path):
        raise RagError(f"another process is writing this index ({uri} is in use); wait for it or use a Milvus server")
    reason = f"{type(error).__name__}: {error}" if error is not None else "Open local milvus failed"
    raise RagError(
        f"Milvus Lite cannot open {uri}: {reason}; if its files are damaged, move it away and index again, or "
        "restore a copy"
    )


class _Catch(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


def _locked(path: str) -> bool:
    """Whether another process holds the Milvus Lite file's lock (its server takes an exclusive ``flock``)."""
    lock = Path(path) / "LOCK"
    if not lock.exists():
        return False
    try:
        import fcntl
    except ImportError:  # Windows: not known
        return False
    with contextlib.suppress(OSError), open(lock, "rb") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(held, fcntl.LOCK_UN)
    return False


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
