"""Keeping a forked child usable: gunicorn, Celery and multiprocessing's ``fork`` copy a process mid-flight.

A fork copies memory, not threads. Each module that holds process-wide thread state resets it in the child with
its own ``os.register_at_fork`` handler (the loading locks, the micro-batch queues). This module covers the one
thing that cannot be reset: OpenMP. When the fork happens while another thread is inside a model's forward pass,
the child inherits OpenMP's thread team mid-region and its next parallel region waits for ever. Such a child
runs torch on one thread, which needs no team, and says so once; a child forked between calls keeps every
thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator

_running = 0
_running_lock = threading.Lock()


@contextlib.contextmanager
def compute_section() -> Iterator[None]:
    """Mark a block that runs torch's parallel kernels, so that a fork during it is made safe in the child."""
    global _running
    with _running_lock:
        _running += 1
    try:
        yield
    finally:
        with _running_lock:
            _running -= 1


def _after_fork_in_child() -> None:
    global _running, _running_lock
    forked_mid_call = _running > 0
    _running, _running_lock = 0, threading.Lock()
    if forked_mid_call:
        import torch

        torch.set_num_threads(1)
        warnings.warn(
            "qwen3_retrieval: this process was forked while a model call was running in another thread, so torch "
            "runs on one thread here (OpenMP cannot resume after such a fork). For full speed in worker processes, "
            "fork before the first call or start them with multiprocessing's 'spawn' or 'forkserver'",
            RuntimeWarning,
            stacklevel=1,
        )


os.register_at_fork(after_in_child=_after_fork_in_child)
