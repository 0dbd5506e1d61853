"""Bulk indexing on Ray: reading, parsing and splitting as Ray Data tasks, embedding as a pool of actors.

Only that work moves to the cluster. This process still decides what to index (the mirror rules: roots,
removals, renamed files) and writes every passage and file record, so a run on Ray leaves exactly the index a
single process does, on a Milvus Lite file or a Milvus server alike. The embedding actors run the same core as
everywhere (our token ids on any engine: transformers on the worker's CPU or GPU, or a vLLM fleet by URL).

The files must be readable at the same paths on every node (a shared file system), as Ray Data's own readers
require. Keys are never shipped to the cluster: workers read ``$VLLM_API_KEY`` where they run.

A run never waits silently. Before it submits anything, the pool is sized to what the cluster has free (see
:func:`size_pool`): actors that do not fit whole CPUs share them, as a Ray Data user sets ``num_cpus`` fractions,
and a request that cannot fit (GPUs the cluster lacks, no CPU left for the actors) is a one-line error. While it
runs, a wait of ``stall_timeout`` seconds with no file back is a one-line error too; the files already stored stay,
and the same run again finishes the rest.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.extras import require
from qwen3_retrieval.rag.files import FileRead, FileToIndex, split_file
from qwen3_retrieval.rag.pages import model_input
from qwen3_retrieval.rag.passages import PassageSplitter, Splitting
from qwen3_retrieval.rag.types import Passage
from qwen3_retrieval.redaction import redact_url

if TYPE_CHECKING:
    from qwen3_retrieval.rag.config import RagConfig


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run an index on Ray.

    Attributes:
        address: The cluster (``ray://host:10001``, ``host:6379`` or ``"auto"``); None connects to
            ``$RAY_ADDRESS`` if set, or starts Ray on this machine for the run.
        embedders: Actors in the embedding pool: one model each.
        gpus: GPUs per embedding actor (0: the CPU; fractions share a GPU).
        files_per_task: Files read and split by one task, and the unit the actors embed in (passages of
            ``files_per_task * 4`` files per call).
        stall_timeout: Seconds the run may go without a file coming back from the cluster before it stops with
            a RagError (the files stored so far stay; the same run again finishes). It covers the actors'
            start, model loading included: raise it for a model every worker downloads first.
    """

    address: str | None = None
    embedders: int = 1
    gpus: float = 0.0
    files_per_task: int = 16
    stall_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.embedders < 1 or self.files_per_task < 1 or self.gpus < 0 or not 0 < self.stall_timeout < math.inf:
            raise ValueError(
                f"RayOptions needs embedders >= 1, files_per_task >= 1, gpus >= 0 and a finite stall_timeout > 0, "
                f"got {self.embedders}, {self.files_per_task}, {self.gpus} and {self.stall_timeout}"
            )


READ_CPUS = 0.5
"""CPUs a reading and splitting task asks for: the room the pool leaves so that reading can always run."""
MIN_ACTOR_CPUS = 0.1
"""The smallest share of a CPU an embedding actor is given when the pool must share CPUs to fit."""


def size_pool(free_cpus: float, free_gpus: float, embedders: int, gpus: float) -> tuple[float, str | None]:
    """CPUs per embedding actor, so that ``embedders`` actors and one reading task fit what a cluster has free.

    Each actor asks for one CPU when the pool and the room for reading (:data:`READ_CPUS`) fit; otherwise the
    CPUs left after reading are shared among the actors, all of them still started, and the second value says
    so in one line. Ray would otherwise start the actors it can and leave the reading tasks waiting for a CPU
    that never frees: a run with no progress and no error.

    Raises:
        RagError: GPUs asked for that the cluster does not have free, or fewer than :data:`MIN_ACTOR_CPUS` per
            actor left after reading; the message names both numbers and the fix.
    """
    if gpus > 0 and embedders * gpus > free_gpus + 1e-9:
        fewer = math.floor(free_gpus / gpus + 1e-6)
        fix = f" or --ray-embedders {fewer}" if fewer >= 1 else ""
        raise RagError(
            f"{embedders} embedding actors with {gpus:g} GPU each ask for {embedders * gpus:g} GPUs, but the Ray "
            f"cluster has {free_gpus:g} free: use --ray-gpus 0 (embed on CPUs){fix}"
        )
    need = embedders + READ_CPUS
    if free_cpus >= need - 1e-9:
        return 1.0, None
    share = math.floor((free_cpus - READ_CPUS) / embedders * 100 + 1e-6) / 100
    if share < MIN_ACTOR_CPUS:
        fewer = math.floor((free_cpus - READ_CPUS) / MIN_ACTOR_CPUS + 1e-6)
        fix = f"use --ray-embedders {fewer}" if fewer >= 1 else "free some CPUs on the cluster or add a node"
        raise RagError(
            f"{embedders} embedding actors and reading need at least {embedders * MIN_ACTOR_CPUS + READ_CPUS:g} "
            f"CPUs, but the Ray cluster has {free_cpus:g} free: {fix}"
        )
    return share, (
        f"the Ray cluster has {free_cpus:g} CPUs free, fewer than {need:g} for {embedders} embedding actors and "
        f"reading: each actor gets {share:g} of a CPU (fewer --ray-embedders give each more)"
    )


def embedded_on_ray(
    todo: list[FileToIndex],
    config: RagConfig,
    splitting: Splitting,
    dimensions: int | None,
    options: RayOptions,
    warn: Callable[[str], None],
) -> Iterator[FileRead]:
    """Each file of ``todo`` read, split and embedded on Ray, as it comes back (in any order).

    Raises:
        RagError: Ray is not installed or the cluster cannot be reached; the pool cannot fit what the cluster
            has free (see :func:`size_pool`); no file came back within ``options.stall_timeout`` seconds; or a
            task failed for a reason the user must fix (a missing extra), with the task's own message.
    """
    ray = require("ray", "ray", "indexing on Ray (--ray)")
    started = not ray.is_initialized()
    if started and options.address:
        _check_reachable(options.address)
    if started:
        try:
            ray.init(address=options.address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = redact_url(options.address) if options.address else "$RAY_ADDRESS or a local one"
            raise RagError(f"cannot start or reach the Ray cluster ({where}): {err}") from None
    try:
        yield from _run(ray, todo, config, splitting, dimensions, options, warn)
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        raise RagError(str(cause)) from None
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    todo: list[FileToIndex],
    config: RagConfig,
    splitting: Splitting,
    dimensions: int | None,
    options: RayOptions,
    warn: Callable[[str], None],
) -> Iterator[FileRead]:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run's own progress is in passages, shown by the caller
    # Ray Data's own guard stops the run when no block moves for this long (its default is 30 minutes);
    # it stops the run's tasks and actors too, so the cluster is left as it was.
    context.execution_no_progress_timeout_s = options.stall_timeout
    stalled: type[BaseException] | None = getattr(importlib.import_module("ray.data.exceptions"), STALLED, None)
    if stalled is None:
        warn(f"Ray Data {ray.__version__} has no stall guard: a stalled run waits (a newer ray has one)")
        stalled = _NeverRaised
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on what it runs; errors are raised
    free = ray.available_resources()
    cpus, note = size_pool(free.get("CPU", 0.0), free.get("GPU", 0.0), options.embedders, options.gpus)
    if note:
        warn(note)
    files = [{"n": n, "path": str(item.file)} for n, item in enumerate(todo)]
    blocks = max(1, math.ceil(len(files) / options.files_per_task))
    split = ray.data.from_items(files, override_num_blocks=blocks).map_batches(
        _split_files,
        fn_kwargs={"model": config.embedding_model, "splitting": splitting.as_dict(), "pages": config.pages},
        batch_size=options.files_per_task,
        batch_format="pandas",
        # Half a core: it differs from the actors' request, which keeps Ray from fusing reading into the
        # embedding actors (then reading would no longer overlap the embedding), and two readers fit a core.
        num_cpus=0.5,
    )
    # Keys stay out of what Ray ships: an actor's engine reads $VLLM_API_KEY on its node.
    shipped = replace(config, embedding_api_key=None, reranker_api_key=None, token=None)
    embedded = split.map_batches(
        _Embed,
        fn_constructor_kwargs={"config": shipped, "dimensions": dimensions},
        batch_size=options.files_per_task * 4,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=options.embedders),
        num_cpus=cpus,
        num_gpus=options.gpus,
    )
    done = 0
    try:
        for row in embedded.iter_rows():
            done += 1
            yield _file_read(todo[int(row["n"])], row, warn)
    except stalled:
        raise RagError(
            f"no progress on the Ray cluster in {options.stall_timeout:g} s ({done} of {len(todo)} files done): "
            "it may be short of CPUs or memory, or a worker may hang; the files stored so far stay, run the same "
            "command again to finish (--ray-stall-timeout sets the wait)"
        ) from None


def _file_read(item: FileToIndex, row: dict[str, Any], warn: Callable[[str], None]) -> FileRead:
    """A file as it came back from the actors: its warnings said, its passages and their vectors."""
    for message in json.loads(row["warnings"]):
        warn(message)
    passages = json.loads(row["passages"])
    if passages is None:
        return FileRead(item, [], skipped=True)
    found = [Passage(*p) for p in passages]  # text, heading, location, image
    vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(found), -1)
    return FileRead(item, found, vectors)


STALLED = "ExecutionTimeoutError"
"""Ray Data's error when its no-progress guard stops a run (``DataContext.execution_no_progress_timeout_s``)."""


class _NeverRaised(Exception):
    """Stands for the guard's error on a Ray Data that has none."""


@functools.lru_cache(maxsize=4)
def _splitter(model: str, chunk_tokens: int, overlap_tokens: int) -> PassageSplitter:
    """One splitter per worker process and settings: the tokenizer is loaded once, not once per task."""
    from qwen3_retrieval.rag.config import passage_tokenizer

    return PassageSplitter(passage_tokenizer(model), Splitting(chunk_tokens, overlap_tokens))


def _split_files(batch: Any, model: str, splitting: dict[str, int], pages: bool = False) -> Any:
    """A Ray Data task: read and split each file of ``batch`` (a pandas frame of ``n`` and ``path``).

    With ``pages``, a page passage carries only which page it is: the pixels are made again from the file where
    it is embedded, as in a run without Ray, so no image travels between the tasks and the actors.
    """
    splitter = _splitter(model, splitting["chunk_tokens"], splitting["overlap_tokens"])
    passages, warnings = [], []
    for path in batch["path"]:
        found, said = split_file(Path(path), splitter, pages)
        passages.append(
            json.dumps(None if found is None else [[p.text, p.heading, p.location, p.image] for p in found])
        )
        warnings.append(json.dumps(said))
    return batch.assign(passages=passages, warnings=warnings)


EMBED_SLICE = 256
"""Passages an embedding actor embeds per call: with ``--pages``, the most page images it holds at once (as many
as a run without Ray embeds per call)."""


class _Embed:
    """A Ray Data actor: one embedder, kept for the actor's life, embeds the passages of a batch of files."""

    def __init__(self, config: RagConfig, dimensions: int | None) -> None:
        self.embedder = config.embedder(dimensions)

    def __call__(self, batch: Any) -> Any:
        files = [json.loads(p) or [] for p in batch["passages"]]
        # As indexing does without Ray: a page passage is embedded as its image, made from the file here (the
        # files are at the same paths on every node); a text passage as its text. In slices of a bounded number
        # of passages, so that at most that many page images are held at once.
        inputs = [
            (Path(path), text, image)
            for path, passages in zip(batch["path"], files, strict=True)
            for text, _, _, image in passages
        ]
        parts = []
        for first in range(0, len(inputs), EMBED_SLICE):
            made = [model_input(*item) if item[2] else item[1] for item in inputs[first : first + EMBED_SLICE]]
            parts.append(self.embedder.embed_documents(made))
        vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        shares, start = [], 0
        for passages in files:
            shares.append(np.ascontiguousarray(vectors[start : start + len(passages)], dtype=np.float32).tobytes())
            start += len(passages)
        return batch.assign(vectors=shares)


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster that does not answer: Ray itself waits minutes for a wrong address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray reads itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS).close()
    except OSError as err:
        raise RagError(
            f"cannot reach the Ray cluster at {redact_url(address)}: {err.strerror or err}; check the address "
            "(the head node's host:6379, or ray://host:10001 for Ray Client)"
        ) from None


REACH_SECONDS = 10.0
"""Seconds to wait for a Ray cluster's address to accept a connection before the run fails."""


def _user_error(err: BaseException) -> RagError | None:
    """The RagError a Ray task raised, found through Ray's wrappers, or None if the failure is another one."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RagError):
            return current
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None
