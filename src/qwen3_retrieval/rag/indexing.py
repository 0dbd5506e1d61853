"""Indexing: make a collection mirror folders, file by file records, with passages batched across files.

Files are read and split by a worker thread that runs ahead of the embedding (a bounded queue), passages of
many files are embedded together in token-budget batches, and a writer thread stores each batch while the next
one is embedded. A file's record is written only after all its passages are stored, so an interrupted run
resumes where it stopped, and one killed anywhere leaves no passage of a file it cannot find again (see
:mod:`~qwen3_retrieval.rag.store`). A file whose content is stored already (renamed, moved within a root, or copied)
takes the stored vectors instead of being embedded again; files gone from a root are removed last, so that a
renamed file still finds its old self.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.files import FileRead, FileToIndex, split_file
from qwen3_retrieval.rag.pages import is_image_file, model_input
from qwen3_retrieval.rag.passages import PassageSplitter, Splitting
from qwen3_retrieval.rag.progress import IndexProgress
from qwen3_retrieval.rag.readers import (
    FORMATS,
    PAGE_FORMATS,
    PAGE_SUFFIXES,
    READERS,
    find_files,
    supported,
)
from qwen3_retrieval.rag.store import FileWrite, PassageStore, StoredFile
from qwen3_retrieval.rag.terminal import is_valid_name, path_name

if TYPE_CHECKING:
    from qwen3_retrieval.rag.config import RagConfig
    from qwen3_retrieval.rag.on_ray import RayOptions

# A moved or renamed folder is recognised when at least this share of its files are stored, unchanged, under
# a root whose folder no longer exists.
SAME_ROOT_SHARE = 0.5


@dataclass
class IndexReport:
    """What :func:`index` did."""

    files_indexed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    passages_added: int = 0
    passages_total: int = 0
    passages_reused: int = 0
    """Passages of renamed, moved or copied files that took their stored vectors instead of being embedded."""
    files_without_text: list[str] = field(default_factory=list)
    """Files read without error that gave no passages (empty, or headings alone), as given (root-relative)."""
    warnings: list[str] = field(default_factory=list)


class IndexModels(Protocol):
    """What an index run needs of its pipeline: the configuration, and the models it names, each made once."""

    config: RagConfig

    def embedder(self, dimensions: int | None) -> Any:
        """The embedding model at ``dimensions`` (None: full size)."""
        ...

    def tokenizer(self) -> Any:
        """The embedding model's tokenizer, which sizes passages."""
        ...


def index_roots(
    store: PassageStore,
    groups: list[tuple[Path, list[Path], bool]],
    models: IndexModels,
    report: IndexReport,
    *,
    recreate: bool,
    warn: Callable[[str], None],
    progress: str,
    ray: RayOptions | None = None,
) -> None:
    """Make ``store`` mirror ``groups`` (each root folder, its files, and whether it was given whole).

    ``progress`` is ``"bar"``, ``"lines"`` or ``"off"`` (see :class:`~qwen3_retrieval.rag.progress.IndexProgress`).
    With ``ray``, new files are read, split and embedded on Ray (see :mod:`~qwen3_retrieval.rag.on_ray`);
    everything else, writes included, happens here as without it.
    """
    if recreate:
        store.drop()
    where = models.config
    settings = checked_settings(store, where)
    dimensions = settings["dimensions"] if settings else where.dimensions
    embedder = models.embedder(dimensions)
    splitting = (where.splitting or Splitting(**settings.get("splitting", {}))).check(embedder.max_length)
    if not settings:
        # On Ray the weights are read by the actors, not here: the model's config gives the size.
        size = embedder.dimension if ray is None else model_dimension(where.embedding_model, where.dimensions)
        settings = {"embedding_model": where.model_id(), "dimensions": size, "splitting": splitting.as_dict()}
        store.create({**settings, "pages": True} if where.pages else settings)
    _repair(store, report, warn)  # a collection rebuilt by create() may find the old records: repaired too
    todo: list[FileToIndex] = []
    gone: list[tuple[str, dict[str, StoredFile]]] = []
    for folder, files, whole in groups:
        changed, removed = _changed_files(store, folder, files, whole, report, warn)
        todo += changed
        gone.append(removed)
    _find_sources(store, todo)
    splitter = PassageSplitter(models.tokenizer(), splitting)
    batch_passages = max(INDEX_BATCH_PASSAGES, where.max_batch * where.max_concurrency)
    shown = IndexProgress(len(todo), sum(item.size for item in todo), progress)
    # On Ray, files that may reuse stored vectors stay here: only this process reads the store.
    here = todo if ray is None else [item for item in todo if item.source]
    with _Writer(store) as writer, _Reader(here, splitter, store, report, warn, where.pages) as reader:
        batches: Iterator[list[FileRead]] = _batches(reader, batch_passages)
        if ray is not None and (there := [item for item in todo if not item.source]):
            from qwen3_retrieval.rag.on_ray import embedded_on_ray

            def note(message: str) -> None:
                add_warning(report, warn, message)

            on_ray = embedded_on_ray(there, where, splitting, dimensions, ray, note)  # their vectors come along
            batches = itertools.chain(batches, _batches(on_ray, batch_passages))
        for batch in batches:
            # A page passage is embedded as its image (rendered again here: the reader holds no pixels).
            inputs = [
                model_input(item.todo.file, p.text, p.image) if p.image else p.text
                for item in batch
                if item.vectors is None
                for p in item.passages
            ]
            vectors = embedder.embed_documents(inputs) if inputs else np.zeros((0, 0), np.float32)
            writer.submit(functools.partial(_store_batch, store, batch, vectors, report))
            shown.advance(len(batch), sum(len(i.passages) for i in batch), sum(i.todo.size for i in batch))
    shown.close()
    for root, old_files in gone:  # last: a file renamed in this run took its old self's vectors first
        store.remove_files(root, old_files)
        report.files_removed += len(old_files)
    report.passages_total = store.count()


INDEX_BATCH_PASSAGES = 256
"""Passages embedded per call, from as many files as it takes: enough for token-budget batches to fill a device
and for a server's requests to run side by side (at least requests in flight x sequences per request)."""
READ_AHEAD_FILES = 32
"""Files read and split ahead of the embedding, at most: what bounds the memory of a run of any size."""


def _changed_files(
    store: PassageStore,
    folder: Path,
    files: list[Path],
    whole: bool,
    report: IndexReport,
    warn: Callable[[str], None],
) -> tuple[list[FileToIndex], tuple[str, dict[str, StoredFile]]]:
    """The files under ``folder`` that are new, changed or left pending, and the root with the files gone from it.

    A file recorded pending (a run was killed while writing or removing it) is indexed again if it is there,
    and removed if it is not: either way none of its passages outlive the file.
    """
    hashes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    present = {_relative(file, folder) for file in files}  # unreadable ones too: their passages stay
    for file in list(files):
        try:
            data = file.read_bytes()
            hashes[_relative(file, folder)] = hashlib.sha256(data).hexdigest()[:32]
            sizes[_relative(file, folder)] = len(data)
        except OSError as err:  # unreadable (permissions, vanished): skipped, and what is stored stays
            files.remove(file)
            add_warning(report, warn, f"skipped {path_name(file)}: {err.strerror or err}")
    root = _root_id(store, folder, hashes)
    store.set_root(root, str(folder))  # first, so an interrupted run finds this root again
    stored = store.files(root)
    gone = {
        path: entry
        for path, entry in stored.items()
        if path not in present and (whole or not (entry.done or (folder / path).exists()))
    }
    todo = []
    for file in files:
        rel = _relative(file, folder)
        known = stored.get(rel)
        if known and known.done and known.file_hash == hashes[rel]:
            report.files_unchanged += 1
        else:
            todo.append(FileToIndex(file, root, rel, hashes[rel], sizes[rel], known))
    return todo, (root, gone)


def _find_sources(store: PassageStore, todo: list[FileToIndex]) -> None:
    """Point each file to index at a stored file with the same content, if any (see :meth:`stored_vectors`)."""
    if not todo:
        return
    by_hash = {f.file_hash: f for root in store.roots() for f in store.files(root).values() if f.done}
    for item in todo:
        item.source = by_hash.get(item.file_hash)


class _Reader:
    """Reads and splits files in a worker thread, at most :data:`READ_AHEAD_FILES` ahead of the consumer.

    A file that cannot be read is skipped with a warning; a missing extra (``RagError``) stops the run, raised
    in the consumer. Leaving the ``with`` block early (an error while embedding) stops the worker.
    """

    def __init__(
        self,
        todo: list[FileToIndex],
        splitter: PassageSplitter,
        store: PassageStore,
        report: IndexReport,
        warn: Callable[[str], None],
        pages: bool = False,
    ) -> None:
        self.todo, self.splitter, self.store, self.report, self.warn = todo, splitter, store, report, warn
        self.pages = pages
        self.queue: queue.Queue[FileRead | BaseException | None] = queue.Queue(maxsize=READ_AHEAD_FILES)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="qwen3-rag-reader", daemon=True)

    def __enter__(self) -> _Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        while self.thread.is_alive():  # free a worker blocked on a full queue
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.1)
        self.thread.join()

    def __iter__(self) -> Iterator[FileRead]:
        while (item := self.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: FileRead | BaseException | None) -> bool:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.queue.put(item, timeout=0.1)
                return True
        return False

    def _work(self) -> None:
        try:
            for todo in self.todo:
                if not self._put(self._read(todo)):
                    return
        except BaseException as err:  # handed to the consumer, who raises it
            self._put(err)
            return
        self._put(None)

    def _read(self, todo: FileToIndex) -> FileRead:
        passages, warnings = split_file(todo.file, self.splitter, self.pages)
        for message in warnings:
            add_warning(self.report, self.warn, message)
        if passages is None:
            return FileRead(todo, [], skipped=True)
        vectors = self.store.stored_vectors(todo.source, passages) if todo.source else None
        return FileRead(todo, passages, vectors, reused=vectors is not None)


class _Writer:
    """Runs store writes in order in a worker thread, so that storing one batch overlaps embedding the next.

    At most one batch waits; an error in a write is raised in the caller at its next submit or at the end.
    """

    def __init__(self, store: PassageStore) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3-rag-writer")
        self.pending: Future[None] | None = None

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.pending is not None and exc[0] is None:
                self.pending.result()
        finally:
            self.pool.shutdown(wait=True)

    def submit(self, write: Callable[[], None]) -> None:
        if self.pending is not None:
            self.pending.result()  # the previous batch is stored (or its error raised) before the next waits
        self.pending = self.pool.submit(write)


def _batches(reader: Iterable[FileRead], size: int) -> Iterator[list[FileRead]]:
    """Files in batches of about ``size`` passages to embed, and of at most four times that in all.

    Batches hold whole files, so that a file's passages are stored together; the cap on all passages (reused
    ones included) bounds a batch's memory when most files reuse stored vectors.
    """
    batch: list[FileRead] = []
    count = held = 0
    for read in reader:
        batch.append(read)
        held += len(read.passages)
        count += len(read.passages) if read.vectors is None else 0
        if count >= size or held >= 4 * size:
            yield batch
            batch, count, held = [], 0, 0
    if batch:
        yield batch


def _store_batch(store: PassageStore, batch: list[FileRead], vectors: Any, report: IndexReport) -> None:
    """Store the files of a batch together (see :meth:`PassageStore.put_files`).

    ``vectors`` holds the embedded passages of the files that reuse none, in order.
    """
    start = 0
    writes: list[FileWrite] = []
    for read in batch:
        todo, passages = read.todo, read.passages
        if read.skipped:
            continue
        if not passages:
            report.files_without_text.append(todo.rel)
            if todo.stored is not None:
                store.remove_files(todo.root, {todo.rel: todo.stored})
            continue
        if read.vectors is not None:
            own = read.vectors
            report.passages_reused += len(passages) if read.reused else 0
        else:
            own = vectors[start : start + len(passages)]
            start += len(passages)
        writes.append(FileWrite(todo.root, todo.rel, passages, own, todo.file_hash, todo.stored))
    store.put_files(writes)
    report.files_indexed += len(writes)
    report.passages_added += sum(len(w.passages) for w in writes)


def checked_settings(store: PassageStore, where: RagConfig) -> dict[str, Any]:
    """The collection's settings ({} if there is none yet), refused if they disagree with ``where``."""
    settings = store.open()
    if settings is None:
        return {}
    recorded, wanted = settings.get("embedding_model"), where.model_id()
    if recorded != wanted:
        raise RagError(
            f"collection {where.collection!r} was built with embedding model {recorded} but this run uses {wanted}; "
            f"pass --embedding-model {recorded}, or index again with --recreate to rebuild it"
        )
    if where.dimensions is not None and where.dimensions != settings["dimensions"]:
        raise RagError(
            f"collection {where.collection!r} holds {settings['dimensions']}-dimensional vectors, not "
            f"{where.dimensions}; use --dimensions {settings['dimensions']}, or --recreate to rebuild it"
        )
    if bool(settings.get("pages")) != where.pages:
        built, fix = ("with", "add --pages") if settings.get("pages") else ("without", "drop --pages")
        raise RagError(
            f"collection {where.collection!r} was built {built} --pages; {fix}, or index again with --recreate to "
            "rebuild it"
        )
    splitting = Splitting(**settings["splitting"])
    if where.splitting is not None and where.splitting != splitting:
        raise RagError(
            f"collection {where.collection!r} was split with --chunk-tokens {splitting.chunk_tokens} "
            f"--overlap-tokens {splitting.overlap_tokens}; use those, or --recreate to rebuild it"
        )
    return settings


def model_dimension(model: str, dimensions: int | None) -> int:
    """The size of the vectors ``model`` makes at ``dimensions``, from its config alone (no weights read)."""
    from qwen3_retrieval.loading import load_error
    from qwen3_retrieval.options import model_source

    try:
        from transformers import AutoConfig

        # A Qwen3-VL model's size is its text model's (it embeds the text model's last state).
        hidden = int(AutoConfig.from_pretrained(model_source(model)).get_text_config().hidden_size)
    except (OSError, ValueError) as err:
        raise RagError(str(load_error(model, err))) from err
    if dimensions is not None and dimensions > hidden:
        raise RagError(f"--dimensions {dimensions} is larger than the model's size {hidden}")
    return dimensions or hidden


def recorded_passages(store: PassageStore) -> int:
    """How many passages the records of completely stored files say the collection holds."""
    return sum(f.parts for root in store.roots() for f in store.files(root).values() if f.done)


def _repair(store: PassageStore, report: IndexReport, warn: Callable[[str], None]) -> None:
    """Mark pending the files whose passages the collection lost (a damaged store): this run indexes them again.

    Files left pending by an interrupted run are not counted as stored: the re-run finishes them.
    """
    if store.count() >= recorded_passages(store):
        return
    held = store.passage_counts()
    lost = 0
    for root in store.roots():
        broken = {path: f for path, f in store.files(root).items() if f.done and held.get(f.key, 0) < f.parts}
        store.forget_files(root, broken)
        lost += len(broken)
    add_warning(
        report,
        warn,
        f"the collection had lost the passages of {lost} files it recorded as indexed (a damaged store); "
        "they are indexed again if they are among the files given",
    )


def given_roots(
    paths: Sequence[str | os.PathLike[str]],
    include_hidden: bool,
    follow_links: bool,
    warn: Callable[[str], None],
    pages: bool = False,
) -> list[tuple[Path, list[Path], bool]]:
    """Each root folder with its files, and whether it was given whole (then files gone from it are removed).

    With ``pages``, image files are taken too.
    """
    suffixes = PAGE_SUFFIXES if pages else READERS.keys()
    formats = PAGE_FORMATS if pages else FORMATS
    if not paths:
        raise RagError("no files or folders to index")
    groups: list[tuple[Path, list[Path], bool]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not is_valid_name(path):
            raise RagError(f"cannot index {path_name(path)}: its name is not valid UTF-8; rename it")
        if not path.exists():
            raise RagError(f"no such file or folder: {path_name(raw)}")
        path = path.resolve()
        if path.is_dir():
            files = find_files(
                path, include_hidden=include_hidden, follow_links=follow_links, warn=warn, suffixes=suffixes
            )
            groups.append((path, files, True))
        elif supported([path], suffixes):
            groups.append((path.parent, [path], False))
        else:
            hint = "" if pages or not is_image_file(path) else "; --pages indexes images"
            raise RagError(f"{path_name(raw)} is not a file qwen3-rag reads ({formats}){hint}")
    if not any(files for _, files, _ in groups):
        names = ", ".join(map(str, paths))
        raise RagError(
            f"no files to index ({formats}) under {names}; hidden folders are skipped without --include-hidden"
        )
    return groups


def _root_id(store: PassageStore, folder: Path, hashes: dict[str, str]) -> str:
    """The id of the root at ``folder``: known by its path, or a moved/renamed root recognised by its files."""
    roots = store.roots()
    for root, path in roots.items():
        if path == str(folder):
            return root
    best, best_share = None, 0.0
    for root, path in roots.items():
        if Path(path).exists():
            continue  # that folder is still there: this one is a copy, not a move
        stored = store.files(root)
        same = sum(1 for rel, h in hashes.items() if rel in stored and stored[rel].file_hash == h)
        share = same / max(len(hashes), 1)
        if share > best_share:
            best, best_share = root, share
    if best is not None and best_share >= SAME_ROOT_SHARE:
        return best
    root = hashlib.sha1(str(folder).encode()).hexdigest()[:16]
    while root in roots:  # a new folder where an older, moved one used to be
        root = hashlib.sha1(root.encode()).hexdigest()[:16]
    return root


def add_warning(report: IndexReport, warn: Callable[[str], None], message: str) -> None:
    """Record a warning in the report and hand it to the caller's ``warn``."""
    report.warnings.append(message)
    warn(message)


def _relative(file: Path, folder: Path) -> str:
    return file.relative_to(folder).as_posix()
