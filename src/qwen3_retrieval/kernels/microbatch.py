"""Micro-batching: calls that arrive while the model is busy run together, each caller gets its own answer.

An agent server embeds one query per request, from many requests at once. Run one at a time, each call is a
small batch that leaves the matrix units half idle; run in parallel threads, the calls fight over the same cores.
Here calls queue, one thread at a time takes everything waiting, runs it as one token-budget batch, and hands
each caller its rows. A lone caller never waits: its call starts at once. While traffic is streaming in (the
previous run ended moments ago), the runner first waits a few milliseconds (``batch_wait_ms``) so a burst rises
into one batch.

Which thread runs a batch: the batcher's *home* thread, the first thread to call it blocking (a script's main
thread, say), runs what is waiting in its own call when the model is idle. Other threads' calls and async calls
(which must not block their event loop) are run by a worker thread, started when needed, or by the home
thread's run if it is running. Why not always a worker: torch's Linux CPU builds use GNU OpenMP, which gives
every thread that runs parallel kernels its own team of threads, and once a process holds more of them than it
has cores, every team gives up spinning at its barriers and sleeps instead. The caller's thread already has a
team (it loaded the model); a second one in a worker made the same float32 embedding round measurably slower for
the same CPU time (see docs/design-notes.md). Why not every caller's thread: a server's
pool of request threads would then keep a team per thread, for as long as the pool lives.

Results equal one-at-a-time calls (every sequence attends only to itself; see :mod:`qwen3_retrieval.kernels.packed`).
At most ``max_waiting`` calls queue; further callers block (threads) or wait without blocking (async) until
there is room. A cancelled async caller's work is skipped if not started and its answer dropped if it was: the
other callers are unaffected. A worker thread exits when the queue is empty, so it holds no model alive.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")

# A run that ended this recently means calls are streaming in: worth waiting a moment to batch the next ones.
_TRAFFIC_S = 0.05


@dataclass
class _Entry(Generic[Job, Result]):
    job: Job
    key: Hashable
    future: Future[Result] = field(default_factory=Future)


class MicroBatcher(Generic[Job, Result]):
    """Merge concurrent calls of one engine into shared runs.

    Args:
        run: Runs a list of jobs with one key together; returns one result per job, in order.
        key: Jobs with equal keys may share a run (e.g. the same batch budget).
        wait_s: How long a run waits for more calls while traffic is streaming in (the longest any waiting job
            asks for); 0 never waits.
        max_waiting: Most calls queued at once; callers beyond it wait for room.
    """

    def __init__(
        self,
        run: Callable[[list[Job]], list[Result]],
        *,
        key: Callable[[Job], Hashable],
        wait_s: Callable[[Job], float],
        max_waiting: int = 1024,
    ) -> None:
        self._run, self._key, self._wait_s, self.max_waiting = run, key, wait_s, max_waiting
        self._last_run_end = float("-inf")
        self._start_empty()
        _batchers.add(self)

    def _start_empty(self) -> None:
        self._waiting: list[_Entry[Job, Result]] = []
        self._cond = threading.Condition()
        self._working = False
        self._home: int | None = None  # the thread that runs its own calls (see the module's notes)

    def submit(self, job: Job) -> Result:
        """Run ``job`` (merged with whatever else is waiting) and return its result.

        In the batcher's home thread the run happens in this thread when the model is idle; elsewhere a worker
        thread runs it (see the module's notes).
        """
        with self._cond:
            if self._home is None:
                self._home = threading.get_ident()
            home = self._home == threading.get_ident()
        entry = self._enqueue(job, block=True, home=home)
        assert entry is not None
        while home:
            with self._cond:
                while self._working and not entry.future.done():
                    self._cond.wait()
                if entry.future.done():
                    return entry.future.result()
                self._working = True
            try:
                self._run_round()
            finally:
                with self._cond:
                    self._working = False
                    if self._waiting:  # other threads' calls, which arrived during the last round
                        self._start_worker()
        return entry.future.result()

    async def asubmit(self, job: Job) -> Result:
        """Async :meth:`submit`: the event loop keeps running; cancelling this call leaves other calls alone."""
        entry = self._enqueue(job, block=False) or await asyncio.to_thread(self._enqueue, job, block=True)
        assert entry is not None
        return await asyncio.wrap_future(entry.future)

    def _enqueue(self, job: Job, *, block: bool, home: bool = False) -> _Entry[Job, Result] | None:
        entry: _Entry[Job, Result] = _Entry(job, self._key(job))
        with self._cond:
            while len(self._waiting) >= self.max_waiting:
                if not block:
                    return None
                self._cond.wait()
            self._waiting.append(entry)
            self._cond.notify_all()
            if not home and not self._working:
                self._start_worker()
        return entry

    def _start_worker(self) -> None:
        """Start a worker thread to run the queue (the caller holds the lock and nothing is running)."""
        self._working = True
        threading.Thread(target=self._work, name="qwen3-retrieval-microbatch", daemon=True).start()

    def _work(self) -> None:
        while self._run_round():
            pass

    def _run_round(self) -> bool:
        """Take every waiting call and run them, key by key; False (and idle) when none was waiting."""
        with self._cond:
            wait_s = max((self._wait_s(entry.job) for entry in self._waiting), default=0.0)
            if wait_s > 0 and time.monotonic() - self._last_run_end < _TRAFFIC_S:
                deadline = time.monotonic() + wait_s
                while len(self._waiting) < self.max_waiting and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            taken, self._waiting = self._waiting, []
            self._cond.notify_all()  # room in the queue again
            if not taken:
                self._working = False
                return False
        live = [entry for entry in taken if entry.future.set_running_or_notify_cancel()]
        for key in dict.fromkeys(entry.key for entry in live):
            self._run_group([entry for entry in live if entry.key == key])
        with self._cond:
            self._last_run_end = time.monotonic()
            self._cond.notify_all()  # a home thread waiting for its answer: else it waits for the next, empty round
        return True

    def _run_group(self, entries: list[_Entry[Job, Result]]) -> None:
        try:
            results = self._run([entry.job for entry in entries])
        except BaseException as err:  # handed to the callers, who raise it
            if len(entries) > 1:  # one caller's failure must not become everyone's: retry each alone
                for entry in entries:
                    self._run_group([entry])
                return
            entries[0].future.set_exception(err)
            return
        for entry, result in zip(entries, results, strict=True):
            entry.future.set_result(result)


# After os.fork (gunicorn, Celery, multiprocessing's "fork"), the child holds only the forking thread: a worker
# that was running in the parent does not exist there, its queue belongs to callers that do not exist either, and
# its lock may be held for ever. Each batcher starts empty in the child, so the child's first call starts a worker.
_batchers: weakref.WeakSet[MicroBatcher[Any, Any]] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for batcher in list(_batchers):
        batcher._start_empty()


os.register_at_fork(after_in_child=_reset_after_fork)
