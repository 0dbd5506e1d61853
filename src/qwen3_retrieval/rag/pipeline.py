"""The RAG pipeline as a library: :class:`RagPipeline` indexes folders, retrieves and answers, keeping its models.

``qwen3-rag`` only parses arguments and prints what these return; a program can call them directly::

    from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

    rag = RagPipeline(RagConfig(uri="./docs.db"))
    report = rag.index(["./docs"])
    sources = rag.retrieve("How do I create an index?")  # the models load once, on the first call
    answer = rag.answer("How do I create an index?", sources)

The functions :func:`index`, :func:`retrieve` and :func:`stream_answer` do the same through one pipeline per
configuration, kept for the life of the process (the few most recent; :func:`release_pipelines` drops them).

Problems a user can fix raise :class:`~qwen3_retrieval.rag.errors.RagError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen3_retrieval.rag.config import RagConfig, passage_tokenizer
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.indexing import (
    IndexReport,
    add_warning,
    checked_settings,
    given_roots,
    index_roots,
    recorded_passages,
)
from qwen3_retrieval.rag.pages import model_input, require_pages
from qwen3_retrieval.rag.progress import progress_mode
from qwen3_retrieval.rag.store import PassageStore, is_server_uri
from qwen3_retrieval.rag.types import MODES, Hit, Source, question_problem
from qwen3_retrieval.redaction import redact_url

if TYPE_CHECKING:
    from qwen3_retrieval.rag.on_ray import RayOptions


class RagPipeline:
    """One index and its two models, kept for the object's lifetime.

    Each model's weights are read once, on first use, however many questions and indexing runs follow (the
    embedder is kept per vector size, so a collection with a Matryoshka size shares the same loaded model).

    Any number of threads and asyncio tasks may call one pipeline at once, and get what the same calls return one
    at a time: the collection is opened once, on first use, and shared by every call. Indexing runs one at a time
    per collection in a process; a question asked during one sees the index as it was before or after each
    batch of files. :meth:`close` (or leaving a ``with`` block) lets go of the collection once the calls in
    flight end; a Milvus Lite file stays locked against other processes until then. A closed pipeline opens the
    collection again if it is called again.

    Args:
        config: Where the passages live and which models embed and rerank them.
    """

    def __init__(self, config: RagConfig | None = None) -> None:
        self.config = config or RagConfig()
        self._embedders: dict[int | None, Any] = {}
        self._reranker: Any = None
        self._tokenizer: Any = None
        self._sound_count: int | None = None  # passages held when the file records last agreed with them
        self._lock = threading.Lock()
        self._store: PassageStore | None = None
        self._store_lock = threading.Lock()
        self._calls = 0  # calls using the store now: close() waits for the last one
        self._closing = False

    def __repr__(self) -> str:
        return f"RagPipeline({self.config!r})"

    def __enter__(self) -> RagPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the collection (a Milvus Lite file is unlocked) once the calls in flight end; models stay."""
        with self._store_lock:
            if self._calls:
                self._closing = True
                return
            store, self._store = self._store, None
        if store is not None:
            store.close()

    @contextlib.contextmanager
    def _using_store(self) -> Iterator[PassageStore]:
        """The shared store, opened on first use, for one call; closed after it only if :meth:`close` asked."""
        store = self._take_store()
        try:
            yield store
        finally:
            self._give_back(store)

    def _take_store(self) -> PassageStore:
        with self._store_lock:
            if self._store is None:
                self._store = self.config.store()
            self._calls += 1
            return self._store

    def _give_back(self, store: PassageStore) -> None:
        with self._store_lock:
            self._calls -= 1
            if not (self._closing and self._calls == 0):
                return
            self._closing = False
            self._store = None
        store.close()

    def embedder(self, dimensions: int | None) -> Any:
        """The embedding model at ``dimensions`` (None: full size), made once."""
        with self._lock:
            if dimensions not in self._embedders:
                self._embedders[dimensions] = self.config.embedder(dimensions)
            return self._embedders[dimensions]

    def reranker(self) -> Any:
        """The reranking model, made once."""
        with self._lock:
            if self._reranker is None:
                self._reranker = self.config.reranker()
            return self._reranker

    def tokenizer(self) -> Any:
        """The embedding model's tokenizer, which sizes passages in its tokens, loaded once."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = passage_tokenizer(self.config.embedding_model)
            return self._tokenizer

    def index(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        include_hidden: bool = False,
        follow_links: bool = False,
        recreate: bool = False,
        warn: Callable[[str], None] = lambda message: None,
        progress: bool | str = False,
        ray: RayOptions | None = None,
    ) -> IndexReport:
        """Make the collection mirror ``paths``: new and changed files indexed, deleted ones removed.

        A renamed, moved or copied file takes the vectors stored for its content instead of being embedded again.
        ``progress=True`` shows progress on stderr in passages, with rate and ETA: a bar on a terminal, a status
        line every few seconds otherwise (``"bar"`` or ``"lines"`` choose).
        ``ray=RayOptions(...)`` reads, splits and embeds the new files on a Ray cluster (the ``[ray]`` extra;
        see :mod:`~qwen3_retrieval.rag.on_ray`); the index is the same as without it.

        A folder is a root: its files are stored by path relative to it, so moving or renaming the folder and
        indexing it again changes nothing stored, and files gone from it are removed. A file given alone is added
        (or updated) under its folder's root and removes nothing. Unreadable files, binary files with a text
        format's name and names that are not valid UTF-8 are skipped with a warning. Symbolic links are followed
        within a folder; ``follow_links`` follows them out of it too (see
        :func:`~qwen3_retrieval.rag.readers.find_files`).
        """
        report = IndexReport()

        def note(message: str) -> None:
            add_warning(report, warn, message)

        mode = progress_mode(progress)
        if self.config.pages:
            require_pages()
        groups = given_roots(paths, include_hidden, follow_links, note, self.config.pages)
        with _writing(self.config):
            new_file = _new_local_file(self.config.uri)
            store = None
            try:
                with self._using_store() as store:
                    index_roots(store, groups, self, report, recreate=recreate, warn=warn, progress=mode, ray=ray)
            except BaseException:
                # A run that fails before storing anything (a model that does not load, a bad --dimensions) leaves
                # no empty Milvus Lite file behind; once a file is stored, it is kept for the re-run to finish.
                if new_file is not None and (store is None or not store.wrote_passages):
                    self.close()
                    shutil.rmtree(new_file, ignore_errors=True)
                raise
        return report

    def retrieve(self, question: str, *, candidates: int = 10, top_n: int = 3, mode: str = "hybrid") -> list[Source]:
        """Return the ``top_n`` passages for ``question``, best first.

        ``candidates`` passages are retrieved (``mode="hybrid"``: dense and BM25 fused by reciprocal rank;
        ``"dense"``: dense alone), then reranked with Qwen3-Reranker.
        """
        _check_question(question, candidates, top_n, mode)
        with self._opened() as (store, settings):
            embedder = self.embedder(settings["dimensions"])
            hits = store.search(embedder.embed_query(question), question, candidates, mode=mode)
            roots = store.roots()
        with _question_fits():
            ranked = self.reranker().rank(question, _rerank_inputs(hits, roots), top_n=top_n)
        return [_source(hits[i], roots, score) for i, score in ranked]

    async def aretrieve(
        self, question: str, *, candidates: int = 10, top_n: int = 3, mode: str = "hybrid"
    ) -> list[Source]:
        """Async :meth:`retrieve`: the models' async paths are awaited, Milvus calls run in a worker thread."""
        _check_question(question, candidates, top_n, mode)
        store, settings = await asyncio.to_thread(self._open)
        try:
            vector = await self.embedder(settings["dimensions"]).aembed_query(question)  # loads in a thread
            hits, roots = await asyncio.to_thread(
                lambda: (store.search(vector, question, candidates, mode=mode), store.roots())
            )
        finally:
            await asyncio.to_thread(self._give_back, store)
        # Pages are rendered for the reranker: off the event loop.
        inputs = await asyncio.to_thread(_rerank_inputs, hits, roots) if self.config.pages else [h.text for h in hits]
        with _question_fits():
            ranked = await self.reranker().arank(question, inputs, top_n=top_n)
        return [_source(hits[i], roots, score) for i, score in ranked]

    def stream_answer(
        self,
        question: str,
        sources: Sequence[Source],
        *,
        model: str = "gpt-4o-mini",
        timeout: float = 60.0,
        images: bool | None = None,
    ) -> Iterator[str]:
        """Yield the chat model's answer as it streams, citing ``sources`` as ``[n]`` (see :func:`stream_answer`).

        ``images``: send page passages as images (the default with ``pages``), or False for their extracted text,
        for a chat model that takes no images.
        """
        send = self.config.pages if images is None else images
        return stream_answer(question, sources, model=model, timeout=timeout, images=send)

    def answer(
        self,
        question: str,
        sources: Sequence[Source],
        *,
        model: str = "gpt-4o-mini",
        timeout: float = 60.0,
        images: bool | None = None,
    ) -> str:
        """The chat model's whole answer (see :meth:`stream_answer`)."""
        return "".join(self.stream_answer(question, sources, model=model, timeout=timeout, images=images))

    def _open(self) -> tuple[PassageStore, dict[str, Any]]:
        """The shared store for one call (given back with :meth:`_give_back`) and its settings.

        Refused if there is no index or it is damaged.
        """
        where = self.config
        if _new_local_file(where.uri) is not None:  # opening it would create an empty one: asking changes nothing
            raise RagError(f"there is no index at {where.uri}; {_index_first(where)}")
        store = self._take_store()
        try:
            settings = checked_settings(store, where)
            if not settings:
                raise RagError(
                    f"collection {where.collection!r} does not exist at {redact_url(where.uri)}; {_index_first(where)}"
                )
            held = store.count()
            # The file records are read (a query per 16th of every root's files) only when the passage count
            # differs from the one last found sound: passages are lost only by damage, which lowers it. Not while
            # this process indexes the collection: a file being replaced or removed is briefly both counted in
            # its record and partly deleted.
            if held != self._sound_count and not _being_written(where):
                recorded = recorded_passages(store)
                if held < recorded:  # what is missing can be neither found nor cited: say so instead of answering
                    raise RagError(
                        f"the index at {redact_url(where.uri)} is damaged: its file records list {recorded} "
                        f"passages but collection {where.collection!r} holds {held}; "
                        f"{_index_first(where).replace('first', 'again')} to repair it (the files whose passages "
                        "are missing are indexed again), or add --recreate to rebuild it"
                    )
                self._sound_count = held
        except BaseException:
            self._give_back(store)
            raise
        return store, settings

    @contextlib.contextmanager
    def _opened(self) -> Iterator[tuple[PassageStore, dict[str, Any]]]:
        store, settings = self._open()
        try:
            yield store, settings
        finally:
            self._give_back(store)


# The module-level functions reuse one pipeline per configuration, so that a program calling them in a loop
# reads each model's weights once; the few most recent configurations are kept.
MAX_PIPELINES = 4
_pipelines: OrderedDict[tuple[RagConfig, int], RagPipeline] = OrderedDict()
_pipelines_lock = threading.Lock()


def pipeline_for(config: RagConfig) -> RagPipeline:
    """The process's pipeline for ``config``, made on first use; the :data:`MAX_PIPELINES` most recent are kept.

    ``VLLM_API_KEY`` is part of the key: its models read it when they are made, so a changed key gets new ones.
    """
    key = (config, hash(os.environ.get("VLLM_API_KEY")))
    evicted = []
    with _pipelines_lock:
        pipeline = _pipelines.pop(key, None) or RagPipeline(config)
        _pipelines[key] = pipeline
        while len(_pipelines) > MAX_PIPELINES:
            evicted.append(_pipelines.popitem(last=False)[1])
    for old in evicted:
        old.close()  # once the calls in flight on it end
    return pipeline


def release_pipelines() -> None:
    """Close and drop the pipelines the module-level functions keep.

    Their models are freed when nothing else holds them, their Milvus Lite files unlocked once the calls in flight
    end.
    """
    with _pipelines_lock:
        dropped = list(_pipelines.values())
        _pipelines.clear()
    for pipeline in dropped:
        pipeline.close()


# Index runs on one collection take turns in a process (pipelines of the same configuration, or the same
# collection under other settings): each decides what to write from what the collection holds when it starts.
_writers: dict[tuple[str, str], threading.Lock] = {}
_writers_lock = threading.Lock()


def _writer(config: RagConfig) -> threading.Lock:
    where = config.uri if is_server_uri(config.uri) else os.path.abspath(Path(config.uri).expanduser())
    with _writers_lock:
        return _writers.setdefault((where, config.collection), threading.Lock())


@contextlib.contextmanager
def _writing(config: RagConfig) -> Iterator[None]:
    with _writer(config):
        yield


def _being_written(config: RagConfig) -> bool:
    return _writer(config).locked()


def index(
    paths: Sequence[str | os.PathLike[str]],
    where: RagConfig,
    *,
    include_hidden: bool = False,
    follow_links: bool = False,
    recreate: bool = False,
    warn: Callable[[str], None] = lambda message: None,
    progress: bool | str = False,
    ray: RayOptions | None = None,
) -> IndexReport:
    """:meth:`RagPipeline.index` on the process's pipeline for ``where``."""
    return pipeline_for(where).index(
        paths,
        include_hidden=include_hidden,
        follow_links=follow_links,
        recreate=recreate,
        warn=warn,
        progress=progress,
        ray=ray,
    )


def retrieve(
    question: str,
    where: RagConfig,
    *,
    reranker_model: str | None = None,
    reranker_url: str | None = None,
    reranker_api_key: str | None = None,
    reranker_served_name: str | None = None,
    candidates: int = 10,
    top_n: int = 3,
    mode: str = "hybrid",
) -> list[Source]:
    """:meth:`RagPipeline.retrieve` on the process's pipeline for ``where`` (its reranker replaced if one is given)."""
    given = (reranker_model, reranker_url, reranker_api_key, reranker_served_name)
    if any(value is not None for value in given):  # a reranker named here replaces the config's
        where = replace(
            where,
            reranker_model=reranker_model or where.reranker_model,
            reranker_url=reranker_url,
            reranker_api_key=reranker_api_key,
            reranker_served_name=reranker_served_name,
        )
    return pipeline_for(where).retrieve(question, candidates=candidates, top_n=top_n, mode=mode)


def stream_answer(
    question: str,
    sources: Sequence[Source],
    *,
    model: str = "gpt-4o-mini",
    timeout: float = 60.0,
    images: bool = False,
) -> Iterator[str]:
    """Yield the chat model's answer as it streams (OpenAI ``stream=True``), citing sources as ``[n]``.

    Uses ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` from the environment. Errors, before or during the stream,
    raise :class:`RagError` with one line. ``images`` sends page passages (``--pages``) as images.
    """
    from qwen3_retrieval.rag.answer import stream_chat

    yield from stream_chat(question, sources, model=model, timeout=timeout, images=images)


# --- helpers -------------------------------------------------------------------------------------------------


def _check_question(question: str, candidates: int, top_n: int, mode: str) -> None:
    if not isinstance(question, str):
        raise TypeError(f"the question must be a str, got {type(question).__name__}")
    problem = question_problem(question)
    if problem is not None:  # nothing to search for: refused
        raise RagError(problem)
    for name, value in (("candidates", candidates), ("top_n", top_n)):
        if value < 1:
            raise RagError(f"--{name.replace('_', '-')} must be at least 1")
    if top_n > candidates:  # never capped silently: the reranker keeps at most the passages it is given
        raise RagError(f"--top-n {top_n} is more than --candidates {candidates}; raise --candidates to {top_n}")
    if mode not in MODES:
        raise RagError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")


@contextlib.contextmanager
def _question_fits() -> Iterator[None]:
    """Say a question too long to rerank in the pipeline's terms (the documents are cut to fit, never it)."""
    from qwen3_retrieval.errors import QueryTooLongError

    try:
        yield
    except QueryTooLongError as err:
        tokens = f"{'more than ' if err.truncated else ''}{err.tokens}"
        raise RagError(
            f"the question is too long to rerank: with the reranker's instruction and prompt it takes {tokens} tokens, "
            f"and the reranker reads {err.limit}; shorten it"
        ) from None


def _new_local_file(uri: str) -> Path | None:
    """The Milvus Lite file ``uri`` names if it does not exist yet (opening it would create it), else None."""
    if is_server_uri(uri):
        return None
    path = Path(uri).expanduser()
    return None if path.exists() else path


def _index_first(where: RagConfig) -> str:
    """The command that builds the collection ``where`` names, with the options that differ from the defaults."""
    default = RagConfig()
    options = "".join(
        f" --{name} {value}"
        for name, value, usual in (
            ("uri", redact_url(where.uri), default.uri),
            ("collection", where.collection, default.collection),
        )
        if value != usual
    )
    return f"run `qwen3-rag index FOLDER{options}` first"


def _source(hit: Hit, roots: dict[str, str], score: float) -> Source:
    path = Path(roots.get(hit.root, "")) / hit.path
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return Source(hit.text, shown, hit.heading, hit.location, score, hit.image)


def _rerank_inputs(hits: Sequence[Hit], roots: dict[str, str]) -> list[Any]:
    """What the reranker reads for each hit: its text, or (``--pages``) the page image made again from the file.

    A page whose file is gone or unreadable since it was indexed is read as its stored text instead.
    """
    inputs: list[Any] = []
    for hit in hits:
        if not hit.image:
            inputs.append(hit.text)
            continue
        try:
            inputs.append(model_input(Path(roots.get(hit.root, "")) / hit.path, hit.text, hit.image))
        except (OSError, ValueError):
            inputs.append(hit.text)
    return inputs
