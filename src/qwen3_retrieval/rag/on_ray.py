"""Bulk indexing on Ray: reading, parsing and splitting as Ray Data tasks, embedding as a pool of actors.

Only that work moves to the cluster. This process still decides what to index (the mirror rules: roots,
removals, renamed files) and writes every passage and file record, so a run on Ray leaves exactly the index a
single process does, on a Milvus Lite file or a Milvus server alike. The embedding actors run the same core as
everywhere (our token ids on any engine: transformers on the worker's CPU or GPU, or a vLLM fleet by URL).

The files must be readable at the same paths on every node (a shared file system), as Ray Data's own readers
require. Keys are never shipped to the cluster: workers read ``$VLLM_API_KEY`` where they run.
"""

from __future__ import annotations

import functools
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
from qwen3_retrieval.rag.indexing import FileRead, FileToIndex, split_file
from qwen3_retrieval.rag.passages import PassageSplitter, Splitting
from qwen3_retrieval.rag.types import Passage
from qwen3_retrieval.redaction import redact_url

if TYPE_CHECKING:
    from qwen3_retrieval.rag.pipeline import RagConfig


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
    """

    address: str | None = None
    embedders: int = 1
    gpus: float = 0.0
    files_per_task: int = 16

    def __post_init__(self) -> None:
        if self.embedders < 1 or self.files_per_task < 1 or self.gpus < 0:
            raise ValueError(
                f"RayOptions needs embedders >= 1, files_per_task >= 1 and gpus >= 0, got {self.embedders}, "
                f"{self.files_per_task} and {self.gpus}"
            )


def embedded_on_ray(
    todo: list[FileToIndex], config: RagConfig, splitting: Splitting, dimensions: int | None, options: RayOptions,
    warn: Callable[[str], None],
) -> Iterator[FileRead]:  # fmt: skip
    """Each file of ``todo`` read, split and embedded on Ray, as it comes back (in any order).

    Raises:
        RagError: Ray is not installed or the cluster cannot be reached, or a task failed for a reason the
            user must fix (a missing extra); the message is the task's own.
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
    ray: Any, todo: list[FileToIndex], config: RagConfig, splitting: Splitting, dimensions: int | None,
    options: RayOptions, warn: Callable[[str], None],
) -> Iterator[FileRead]:  # fmt: skip
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run's own progress is in passages, shown by the caller
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on what it runs; errors are raised
    files = [{"n": n, "path": str(item.file)} for n, item in enumerate(todo)]
    blocks = max(1, math.ceil(len(files) / options.files_per_task))
    split = ray.data.from_items(files, override_num_blocks=blocks).map_batches(
        _split_files,
        fn_kwargs={"model": config.embedding_model, "splitting": splitting.as_dict()},
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
        num_cpus=1,
        num_gpus=options.gpus,
    )
    for row in embedded.iter_rows():
        item = todo[int(row["n"])]
        for message in json.loads(row["warnings"]):
            warn(message)
        passages = json.loads(row["passages"])
        if passages is None:
            yield FileRead(item, [], skipped=True)
            continue
        found = [Passage(*p) for p in passages]
        vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(found), -1)
        yield FileRead(item, found, vectors)


@functools.lru_cache(maxsize=4)
def _splitter(model: str, chunk_tokens: int, overlap_tokens: int) -> PassageSplitter:
    """One splitter per worker process and settings: the tokenizer is loaded once, not once per task."""
    from qwen3_retrieval.rag.pipeline import passage_tokenizer

    return PassageSplitter(passage_tokenizer(model), Splitting(chunk_tokens, overlap_tokens))


def _split_files(batch: Any, model: str, splitting: dict[str, int]) -> Any:
    """A Ray Data task: read and split each file of ``batch`` (a pandas frame of ``n`` and ``path``)."""
    splitter = _splitter(model, splitting["chunk_tokens"], splitting["overlap_tokens"])
    passages, warnings = [], []
    for path in batch["path"]:
        found, said = split_file(Path(path), splitter)
        passages.append(json.dumps(None if found is None else [[p.text, p.heading, p.location] for p in found]))
        warnings.append(json.dumps(said))
    return batch.assign(passages=passages, warnings=warnings)


class _Embed:
    """A Ray Data actor: one embedder, kept for the actor's life, embeds the passages of a batch of files."""

    def __init__(self, config: RagConfig, dimensions: int | None) -> None:
        self.embedder = config.embedder(dimensions)

    def __call__(self, batch: Any) -> Any:
        files = [json.loads(p) or [] for p in batch["passages"]]
        texts = [text for passages in files for text, _, _ in passages]
        vectors = self.embedder.embed_documents(texts) if texts else np.zeros((0, 0), np.float32)
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
