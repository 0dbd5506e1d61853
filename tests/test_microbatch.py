"""Micro-batching: merged runs, a lone caller unhindered, cancellation, failures and the queue bound."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from qwen3_retrieval.kernels.microbatch import MicroBatcher


class Recorder:
    """A run function that doubles numbers, records each run's jobs, and can be held until released."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.threads: list[str] = []

    def __call__(self, jobs: list[int]) -> list[int]:
        self.runs.append(list(jobs))
        self.threads.append(threading.current_thread().name)
        self.started.set()
        self.release.wait(10)
        if any(job < 0 for job in jobs):
            raise ValueError(f"negative job in {jobs}")
        return [2 * job for job in jobs]


def batcher(run: Recorder, wait_s: float = 0.0, max_waiting: int = 1024) -> MicroBatcher[int, int]:
    return MicroBatcher(run, key=lambda job: job % 2 == 0, wait_s=lambda job: wait_s, max_waiting=max_waiting)


def while_busy(b: MicroBatcher[int, int], run: Recorder, first: int, others: list[int]) -> list[int | Exception]:
    """Submit ``first``, hold its run, queue ``others`` meanwhile, release; return every call's answer or error."""
    run.release.clear()
    with ThreadPoolExecutor(len(others) + 1) as pool:
        calls = [pool.submit(b.submit, first)]
        assert run.started.wait(5)
        calls += [pool.submit(b.submit, n) for n in others]
        time.sleep(0.3)  # let them all queue behind the running call
        run.release.set()
        return [call.exception() or call.result() for call in calls]  # type: ignore[misc]


def test_a_lone_caller_runs_alone_and_at_once() -> None:
    run = Recorder()
    b = batcher(run, wait_s=5.0)  # a lone caller must not wait for company
    start = time.monotonic()
    assert b.submit(21) == 42
    assert time.monotonic() - start < 2.5
    assert run.runs == [[21]]


def test_the_first_blocking_caller_runs_its_calls_in_its_own_thread_and_others_share_one_worker() -> None:
    # GNU OpenMP slows every thread team once a process holds more of them than cores: a worker thread would
    # add a team beside the caller's, and a team per caller would add one per thread of a server's pool.
    run = Recorder()
    b = batcher(run)
    assert [b.submit(n) for n in (1, 2)] == [2, 4]
    assert run.threads == [threading.current_thread().name] * 2
    with ThreadPoolExecutor(4, thread_name_prefix="caller") as pool:
        assert list(pool.map(b.submit, [10, 11, 12, 13])) == [20, 22, 24, 26]
    assert set(run.threads[2:]) == {"qwen3-retrieval-microbatch"}  # a worker ran them, not their callers


def test_the_home_threads_call_made_while_a_worker_runs_is_answered_by_that_worker() -> None:
    run = Recorder()
    b = batcher(run)
    answers: list[int] = []
    go = threading.Event()

    def home_calls() -> None:  # one live thread throughout: a dead one's ident may be reused by the next
        answers.append(b.submit(1))
        go.wait(5)
        answers.append(b.submit(5))

    home = threading.Thread(target=home_calls, name="home")
    home.start()
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline:
        time.sleep(0.01)
    run.release.clear()
    run.started.clear()
    with ThreadPoolExecutor(1, thread_name_prefix="caller") as pool:
        other = pool.submit(b.submit, 3)  # not the home thread: a worker runs it, held
        assert run.started.wait(5)
        go.set()
        time.sleep(0.2)
        run.release.set()
        home.join(5)
        assert not home.is_alive() and answers == [2, 10] and other.result(5) == 6
    assert run.threads == ["home", "qwen3-retrieval-microbatch", "qwen3-retrieval-microbatch"]


async def test_an_async_call_queued_behind_a_blocking_one_is_run_when_that_one_ends() -> None:
    run = Recorder()
    b = batcher(run)
    run.release.clear()
    blocking = asyncio.ensure_future(asyncio.to_thread(b.submit, 1))
    assert await asyncio.to_thread(run.started.wait, 5)
    queued = asyncio.ensure_future(b.asubmit(3))
    await asyncio.sleep(0.1)
    run.release.set()
    assert await asyncio.wait_for(blocking, 5) == 2
    assert await asyncio.wait_for(queued, 5) == 6  # no blocking caller left to run it: a worker thread does
    assert run.runs == [[1], [3]]


def test_calls_arriving_while_busy_share_one_run_and_get_their_own_answers() -> None:
    run = Recorder()
    others = list(range(2, 22, 2))
    assert while_busy(batcher(run), run, 0, others) == [0, *(2 * n for n in others)]
    # One run for all the waiting calls, in whatever order their threads reached the queue.
    assert [run.runs[0], sorted(run.runs[1]), len(run.runs)] == [[0], others, 2]


def test_jobs_with_different_keys_never_share_a_run() -> None:
    run = Recorder()
    assert while_busy(batcher(run), run, 100, [1, 2, 3, 4]) == [200, 2, 4, 6, 8]
    assert sorted(map(sorted, run.runs[1:])) == [[1, 3], [2, 4]]


def test_one_failing_call_does_not_fail_the_calls_merged_with_it() -> None:
    run = Recorder()
    first, good, bad, good2 = while_busy(batcher(run), run, 10, [2, -4, 6])
    assert (first, good, good2) == (20, 4, 12)
    assert isinstance(bad, ValueError) and "negative job" in str(bad)
    assert run.runs[1] == [2, -4, 6]  # merged, then each retried alone


async def test_a_cancelled_async_caller_leaves_the_others_alone() -> None:
    run = Recorder()
    b = batcher(run)
    run.release.clear()
    busy = asyncio.ensure_future(b.asubmit(0))
    assert await asyncio.to_thread(run.started.wait, 5)
    doomed = asyncio.ensure_future(b.asubmit(2))
    kept = asyncio.ensure_future(b.asubmit(4))
    await asyncio.sleep(0.1)
    doomed.cancel()
    await asyncio.sleep(0.1)  # the cancellation reaches the queued call within a turn or two of the event loop
    run.release.set()
    assert await busy == 0 and await kept == 8
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert run.runs == [[0], [4]]  # the cancelled call was never run


def test_the_queue_is_bounded() -> None:
    run = Recorder()
    b = batcher(run, max_waiting=2)
    run.release.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(b.submit, 0)
        assert run.started.wait(5)
        queued = [pool.submit(b.submit, n) for n in (2, 4)]
        time.sleep(0.2)
        blocked = pool.submit(b.submit, 6)
        time.sleep(0.3)
        assert not blocked.done()  # no room: it waits outside the queue
        run.release.set()
        assert [f.result() for f in (first, *queued, blocked)] == [0, 4, 8, 12]
    assert run.runs[1] == [2, 4] and run.runs[2] == [6]


def test_the_worker_thread_ends_when_idle() -> None:
    run = Recorder()
    b = batcher(run)
    assert b.submit(1) == 2  # the home thread: its calls need no worker
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(b.submit, 3).result() == 6  # another thread's call: run by a worker
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(t.name == "qwen3-retrieval-microbatch" for t in threading.enumerate()):
        time.sleep(0.01)
    assert not any(t.name == "qwen3-retrieval-microbatch" for t in threading.enumerate())
