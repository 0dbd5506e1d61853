"""Keeping a forked child usable: gunicorn, Celery and multiprocessing's ``fork`` copy a process mid-flight.

A fork copies memory, not threads. Each module that holds process-wide thread state resets it in the child with
its own ``os.register_at_fork`` handler (the loading locks, the micro-batch queues). This module covers torch,
whose state cannot be reset from Python, in two ways:

- A lock or a parallel region that another thread is inside at the fork is copied as it is, with no thread left
  to finish it: MKL's buffer lock in the middle of a matrix product, OpenMP's team in the middle of a region. The
  child's first call then waits for ever. So a fork waits until no thread is inside a :func:`compute_section`,
  and no section starts until the fork is done. A long call lets a waiting fork through between two batches
  (:func:`fork_point`), so a fork waits for at most the batch in flight, not for the whole call.
- GNU OpenMP, which torch's Linux CPU builds use, cannot start its threads again in a child once the parent has
  used them, even when they sit idle at the fork: the child's first parallel region waits for ever. So a child
  forked after this process loaded or ran a model runs torch on one thread, as torch's own DataLoader workers
  do, and says so once. A child forked before the first load keeps every thread.
- A thread that ran a section and then ends (a micro-batch worker whose queue is empty, a request thread of a
  threaded server) takes its OpenMP team down from its thread-exit handlers, and those team threads free their
  MKL buffers under MKL's process-wide memory lock as they exit. A fork in that moment copies the lock held, and
  the child's first matrix product waits for ever. So such a thread ends its team itself before it ends, inside
  a section: OpenMP's ``omp_pause_resource_all`` joins the team's threads, so they are gone when it returns.
  The thread's own thread-exit handlers (MKL frees its buffers there too) run after ``Thread.join`` returns, so
  a fork also waits until every such thread has left the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
import warnings
from collections.abc import Iterator

_cond = threading.Condition()
_running = 0  # sections open now, over all threads (a nested section counts again)
_forks = 0  # forks waiting for the open sections to finish
_used = False  # a section ran in this process: OpenMP's threads may exist
_depth = threading.local()  # sections open in this thread
_ending: set[tuple[int, str]] = set()  # threads past their last section, maybe still in their thread-exit handlers
_ENDING_WAIT_S = 10.0  # a thread's exit handlers are short; should one stall, a fork goes on after this long


def _mine() -> int:
    return getattr(_depth, "n", 0)


class _TeamOwner:
    """Kept in a thread's local storage from its first section on; when the thread ends, so does its team.

    Python drops a thread's local storage in that thread as it ends, before ``Thread.join`` returns and before the
    thread-exit handlers of OpenMP and MKL run. Only the thread that made it acts: a forked child also drops the
    storage of its parent's other threads, whose teams it never had.
    """

    def __init__(self) -> None:
        self.owner = threading.get_native_id()
        self.runtimes = _openmp_runtimes()  # found now: not while the thread is being taken apart

    def __del__(self) -> None:
        try:
            if threading.get_native_id() == self.owner:
                _end_team(self.runtimes, self.owner)
        except Exception:  # the interpreter may be shutting down: there is nothing left to protect then
            pass


def _end_team(runtimes: list[ctypes.CDLL], thread: int) -> None:
    """End this thread's OpenMP team inside a section, and have forks wait for the rest of its exit."""
    # Not compute_section(): this runs while Python drops the thread's local storage, which that would recreate.
    _enter(0)
    try:
        for runtime in runtimes:
            runtime.omp_pause_resource_all(_OMP_PAUSE_HARD)
        with _cond:
            _ending.difference_update([gone for gone in _ending if not _alive(gone)])  # the one place it shrinks
            _ending.add(_identity(thread))
    finally:
        _leave()


def _wait_until_gone(threads: set[tuple[int, str]]) -> None:
    """Wait until these threads have left the process: the kernel drops a thread's entry once its exit is done."""
    deadline = time.monotonic() + _ENDING_WAIT_S
    for thread in threads:
        while _alive(thread) and time.monotonic() < deadline:
            time.sleep(0.0002)  # lets go of the GIL, which the ending thread may still need


def _identity(native_id: int) -> tuple[int, str]:
    """A thread's id and start time: the id alone may name a newer thread once the old one is gone."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as stat:
            return native_id, stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return native_id, ""


def _alive(thread: tuple[int, str]) -> bool:
    return bool(thread[1]) and _identity(thread[0]) == thread


def _enter(mine: int) -> None:
    """Count a section opening in a thread with ``mine`` sections open, once no fork is waiting (unless nested)."""
    global _running, _used
    with _cond:
        while _forks and not mine:  # a thread already inside a section must finish it, or the fork waits for ever
            _cond.wait()
        _running += 1
        _used = True


def _leave() -> None:
    global _running
    with _cond:
        _running -= 1
        _cond.notify_all()


_OMP_PAUSE_HARD = 2  # omp_pause_hard: free the thread's team, and join its threads
_runtimes: list[ctypes.CDLL] | None = None


def _openmp_runtimes() -> list[ctypes.CDLL]:
    """The GNU OpenMP libraries loaded in this process (torch's own copy, and any other), read once."""
    global _runtimes
    if _runtimes is None:
        found = []
        with contextlib.suppress(OSError):
            with open("/proc/self/maps") as maps:
                paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
            for path in sorted(p for p in paths if os.path.basename(p).startswith("libgomp")):
                with contextlib.suppress(OSError, AttributeError):
                    runtime = ctypes.CDLL(path)
                    runtime.omp_pause_resource_all.argtypes = [ctypes.c_int]
                    found.append(runtime)
        _runtimes = found
    return _runtimes


@contextlib.contextmanager
def compute_section() -> Iterator[None]:
    """Mark a block that runs torch kernels (loading weights, a forward pass), so that no fork splits it."""
    mine = _mine()
    if not hasattr(_depth, "team") and threading.current_thread() is not threading.main_thread():
        _depth.team = _TeamOwner()  # the main thread's end is the process's: nothing forks after it
    _enter(mine)
    _depth.n = mine + 1
    try:
        yield
    finally:
        _depth.n = mine
        _leave()


def fork_point() -> None:
    """Between two batches of a section: let a fork that is waiting happen now instead of after the whole call."""
    global _running
    mine = _mine()
    if not mine:
        return
    with _cond:
        if not _forks:
            return
        _running -= mine
        _cond.notify_all()
        while _forks:
            _cond.wait()
        _running += mine


def _before_fork() -> None:
    global _forks
    with _cond:
        _forks += 1
        while _running > _mine():  # the forking thread's own sections are its own business
            _cond.wait()
        ending = set(_ending)  # none joins now: a thread adds itself inside a section, and none starts until the fork
    _wait_until_gone(ending)


def _after_fork_in_parent() -> None:
    global _forks
    with _cond:
        _forks -= 1
        _cond.notify_all()


def _after_fork_in_child() -> None:
    global _cond, _running, _forks, _ending
    _cond, _running, _forks, _ending = threading.Condition(), _mine(), 0, set()
    if _used:
        import torch

        torch.set_num_threads(1)
        warnings.warn(
            "qwen3_retrieval: this process was forked after its parent loaded or ran a model, so torch runs on one "
            "thread here (GNU OpenMP cannot start its threads again after a fork). For full speed in worker "
            "processes, fork before the first load, or start them with multiprocessing's 'spawn' or 'forkserver'",
            RuntimeWarning,
            stacklevel=1,
        )


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
