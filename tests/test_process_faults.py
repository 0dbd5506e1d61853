"""Process-level faults that are races: first loads of several models at once, and fork during a call.

Each case runs in fresh processes, several at a time, because the fault depends on timing and on what a process
has not imported yet; a case that passes once by luck would not pass in every process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROCESSES = 6


def _outcomes(runs: list[subprocess.Popen[str]]) -> list[tuple[str, str, int]]:
    """Wait for every process (at most 300 s each); one that is still running then is killed, never left behind."""
    outcomes = []
    for run in runs:
        try:
            out, err = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
            err += "\n(killed after 300 s)"
        outcomes.append((out, err, run.returncode))
    return outcomes


FIRST_CALLS_TOGETHER = textwrap.dedent(
    """
    import sys, threading
    from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker

    embedder = Qwen3Embedder(sys.argv[1], device="cpu")
    packed = Qwen3Reranker(sys.argv[2], device="cpu")
    padded = Qwen3Reranker(sys.argv[2], device="cpu", attn_implementation="sdpa")  # another model key
    calls = [
        lambda: embedder.embed_query("hello"),
        lambda: packed.score("q", ["d"]),
        lambda: padded.score("q", ["d"]),
    ]
    start = threading.Barrier(len(calls))
    errors = []

    def first(call):
        start.wait()
        try:
            call()
        except BaseException as err:
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=first, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for call in calls:  # and every later call works too
        call()
    print("errors:", errors)
    """
)


def test_first_calls_of_several_models_at_once_load_all_of_them(embedding_path: Path, reranker_path: Path) -> None:
    # Before loads were serialised, 2 to 5 of every 6 processes failed with "cannot import name 'AutoTokenizer'"
    # or "Cannot copy out of meta tensor", and the failed model kept failing.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_CALLS_TOGETHER, str(embedding_path), str(reranker_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    outcomes = _outcomes(runs)
    failed = [(code, out, err[-2000:]) for out, err, code in outcomes if code != 0 or "errors: []" not in out]
    assert not failed, failed


# The end of each fork script: the forked child's exit code, or "child hung" after two minutes.
WAIT_FOR_THE_CHILD = textwrap.dedent(
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child exit", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        print("child hung")
    """
)

FORK_DURING_A_CALL = (
    textwrap.dedent(
        """
    import os, sys, threading, time, warnings
    import numpy as np
    from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker

    # "merged" or "alone": fork during a call merged on a worker, or run in its caller's thread; "between": fork
    # after calls that ran in the forking thread itself.
    mode = sys.argv[3]
    wait = 2.0 if mode == "merged" else None
    embedder = Qwen3Embedder(sys.argv[1], device="cpu", batch_wait_ms=wait)
    reranker = Qwen3Reranker(sys.argv[2], device="cpu", batch_wait_ms=wait)
    texts = ["some words to embed, again and again " * 60] * 48
    mine = ["child text", *texts[:4]]  # long enough that the child's call runs torch's parallel kernels
    expected = embedder.embed_documents(mine), reranker.score("q", mine)
    running = threading.Event()
    stop = False

    def busy():
        while not stop:
            running.set()
            embedder.embed_documents(texts)
            reranker.score("q", texts)

    worker = threading.Thread(target=busy)
    if mode == "between":
        embedder.embed_documents(texts)  # OpenMP starts its team in this thread
        reranker.score("q", texts)
    else:
        worker.start()
        running.wait()
        time.sleep(0.3)  # well inside a call: one round takes seconds
    pid = os.fork()
    if pid == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one-thread notice, given at the fork, is checked on stderr
            vectors, scores = embedder.embed_documents(mine), reranker.score("q", mine)
        same = abs(vectors - expected[0]).max() < 1e-5 and max(map(abs, np.subtract(scores, expected[1]))) < 1e-5
        os._exit(0 if same else 3)
    import multiprocessing  # a pool forked while the calls run, as gunicorn and Celery fork their workers

    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        pooled = pool.apply_async(embedder.embed_documents, (mine,)).get(timeout=120)
        print("pool", "same" if abs(pooled - expected[0]).max() < 1e-5 else "different")
    except multiprocessing.TimeoutError:
        print("pool hung")
    finally:
        pool.terminate()
        stop = True
        if worker.is_alive():
            worker.join()
    """
    )
    + WAIT_FOR_THE_CHILD
)


def _fork_during_calls(embedding_path: Path, reranker_path: Path, mode: str) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", FORK_DURING_A_CALL, str(embedding_path), str(reranker_path), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = _outcomes(runs)
    assert all(code == 0 and "child exit 0" in out and "pool same" in out for out, _, code in outcomes), outcomes
    # Both children (the forked one and the pool's worker) were forked after a load: each says it runs on one thread.
    assert all(err.count("so torch runs on one thread here") == 2 for _, err, _ in outcomes), outcomes


def test_a_child_forked_during_a_merged_call_works(embedding_path: Path, reranker_path: Path) -> None:
    # Before: the child found the parent's micro-batch worker marked busy, queued its call, and waited for ever.
    # Later, about one process in eight hung in MKL: the parent's worker held MKL's buffer lock at the fork.
    _fork_during_calls(embedding_path, reranker_path, "merged")


def test_a_child_forked_between_calls_works(embedding_path: Path, reranker_path: Path) -> None:
    # Before: the child kept every thread, and GNU OpenMP, whose idle team the parent's calls had started,
    # cannot start its threads again after a fork: the child hung in its first call.
    _fork_during_calls(embedding_path, reranker_path, "between")


def test_a_child_forked_during_a_call_in_its_callers_thread_works(embedding_path: Path, reranker_path: Path) -> None:
    # Before: the child inherited OpenMP's team in the middle of a parallel region and hung in its first call.
    _fork_during_calls(embedding_path, reranker_path, "alone")


FORK_AS_A_THREAD_ENDS = textwrap.dedent(
    """
    import os, sys, threading, time, warnings
    from qwen3_retrieval import Qwen3Embedder

    embedder = Qwen3Embedder(sys.argv[1], device="cpu")
    texts = ["some words to embed, again and again " * 60] * 8  # long enough for MKL's buffered products
    mine = ["child text", *texts[:2]]
    expected = embedder.embed_documents(mine)  # this thread's calls run here; other threads' run in a worker
    for attempt in range(int(sys.argv[2])):
        caller = threading.Thread(target=embedder.embed_documents, args=(texts,))
        caller.start()
        caller.join()  # the call is done; the worker that ran it is ending now, its team with it
        pid = os.fork()
        if pid == 0:
            warnings.simplefilter("ignore")  # the one-thread notice
            os._exit(0 if abs(embedder.embed_documents(mine) - expected).max() < 1e-5 else 3)
        deadline = time.monotonic() + 30
        while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        if not done[0]:
            os.kill(pid, 9)
            print(f"child {attempt} hung")
            break
        if os.waitstatus_to_exitcode(done[1]) != 0:
            print(f"child {attempt} exited with", os.waitstatus_to_exitcode(done[1]))
            break
    else:
        print("all children worked")
    """
)


def test_children_forked_as_a_worker_thread_ends_work(embedding_path: Path) -> None:
    # Before: about one child in six hung in its first matrix product. The worker that ran the other thread's call
    # had just ended, and its OpenMP team's threads, then its own exit handlers, were freeing MKL buffers under
    # MKL's memory lock; the child got that lock held.
    run = subprocess.Popen(
        [sys.executable, "-c", FORK_AS_A_THREAD_ENDS, str(embedding_path), "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    [(out, err, code)] = _outcomes([run])
    assert code == 0 and out.strip() == "all children worked", (out, err[-2000:])


FORK_DURING_A_VL_CALL = (
    textwrap.dedent(
        """
    import os, sys, threading, time, warnings
    import numpy as np
    from PIL import Image
    from qwen3_retrieval import Qwen3VLEmbedder

    vl = Qwen3VLEmbedder(sys.argv[1], device="cpu", batch_tokens=200)  # many batches a call
    images = [Image.effect_noise((256, 256), 40 + i).convert("RGB") for i in range(24)]
    inputs = [{"text": f"page {i}", "image": image} for i, image in enumerate(images)]
    mine = ["child text", {"image": images[0]}]
    expected = vl.embed(mine)
    running = threading.Event()
    stop = False

    def busy():
        while not stop:
            running.set()
            vl.embed(inputs)

    worker = threading.Thread(target=busy)
    worker.start()
    running.wait()
    time.sleep(0.3)  # inside a call, which holds the model's lock between its batches
    pid = os.fork()  # goes between two of the worker's batches
    if pid == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            same = abs(vl.embed(mine) - expected).max() < 1e-5
        os._exit(0 if same else 3)
    stop = True
    worker.join()
    """
    )
    + WAIT_FOR_THE_CHILD
)


def test_a_child_forked_during_a_vl_call_works(vl_embedding: Path) -> None:
    """The VL engine's lock, held by the call in flight at the fork, is a fresh one in the child."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_DURING_A_VL_CALL, str(vl_embedding)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "child exit 0" in done.stdout, (done.stdout, done.stderr[-2000:])
