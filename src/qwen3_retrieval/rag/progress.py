"""Indexing progress in passages, with rate and ETA: a bar on a terminal, otherwise a status line every few seconds.

How many passages a run makes is known only once every file is split, and files are split as the run goes.
The total is estimated from the bytes of the files read so far against those of all the files to index, and
refined with every batch, so the ETA is sound once a few batches are done. Status lines come every few seconds
even while one batch is embedded for minutes (a batch of a real model on a CPU can take that long).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

STATUS_SECONDS = 5.0
"""Seconds between two status lines when the output is not a terminal."""


MODES = ("bar", "lines", "off")


def progress_mode(progress: bool | str, stream: TextIO | None = None) -> str:
    """The mode for ``progress``: True means a bar on a terminal and status lines otherwise, False ``"off"``.

    Raises:
        ValueError: ``progress`` is a string other than the :data:`MODES`.
    """
    if isinstance(progress, str):
        if progress not in MODES:
            raise ValueError(f"progress={progress!r} is not one of {', '.join(MODES)} (or True / False)")
        return progress
    if not progress:
        return "off"
    return "bar" if (stream if stream is not None else sys.stderr).isatty() else "lines"


class IndexProgress:
    """Counts the passages, files and bytes a run has stored, and shows them.

    Args:
        files: How many files the run has to index.
        size: Their total size in bytes.
        mode: ``"bar"`` (tqdm), ``"lines"`` (a status line every :data:`STATUS_SECONDS`) or ``"off"``.
        stream: Where to write (stderr by default).
        clock: Seconds from a monotonic clock (tests give their own).
    """

    def __init__(
        self,
        files: int,
        size: int,
        mode: str,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files, self.size, self.clock = files, max(size, 1), clock
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode if files else "off"
        self.done_files = self.done_passages = self.done_bytes = 0
        self.printed = 0  # files done at the last line printed
        self.start = self.shown = clock()
        self.shown_at = time.monotonic()
        self.bar: Any = None
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.ticker: threading.Thread | None = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, desc="Indexing", unit="passage", file=self.stream, dynamic_ncols=True)
        elif self.mode == "lines":
            self.ticker = threading.Thread(target=self._tick, name="qwen3-rag-progress", daemon=True)
            self.ticker.start()

    def estimated_total(self) -> int:
        """Passages the whole run will make: those so far, scaled by the bytes still to read (at least those)."""
        if not self.done_bytes:
            return self.done_passages
        return max(self.done_passages, round(self.done_passages * self.size / self.done_bytes))

    def advance(self, files: int, passages: int, size: int) -> None:
        """Count a batch of ``files`` (``size`` bytes) that made ``passages``."""
        with self.lock:
            self.done_files += files
            self.done_passages += passages
            self.done_bytes += size
            if self.bar is not None:
                self.bar.total = self.estimated_total()
                self.bar.set_postfix_str(f"{self.done_files}/{self.files} files", refresh=False)
                self.bar.update(passages)
            elif self.mode == "lines" and self.clock() - self.shown >= STATUS_SECONDS:
                self._line()

    def status(self) -> str:
        """One line: passages of about how many, files, rate and time left."""
        elapsed = max(self.clock() - self.start, 1e-9)
        if not self.done_files:  # nothing to estimate from yet
            return f"qwen3-rag: indexing the first of {self.files} files, {_duration(elapsed)} so far"
        rate = self.done_passages / elapsed
        total = self.estimated_total()
        left = f", about {_duration((total - self.done_passages) / rate)} left" if rate > 0 else ""
        return (
            f"qwen3-rag: indexed {self.done_passages} of about {total} passages "
            f"({self.done_files} of {self.files} files), {rate:.1f} passages/s{left}"
        )

    def close(self) -> None:
        """Finish the bar (its total becomes what was counted), or print the last status line."""
        self.stopped.set()
        if self.ticker is not None:
            self.ticker.join()
        if self.bar is not None:
            self.bar.total = self.done_passages
            self.bar.refresh()
            self.bar.close()
        elif self.mode == "lines" and self.done_files and self.printed != self.done_files:
            self._line()

    def _tick(self) -> None:
        """Print a status line whenever none was printed for :data:`STATUS_SECONDS` (a long batch)."""
        while not self.stopped.wait(STATUS_SECONDS / 5):
            with self.lock:
                if time.monotonic() - self.shown_at >= STATUS_SECONDS:  # real seconds, whatever clock counts
                    self._line()

    def _line(self) -> None:
        self.shown, self.printed, self.shown_at = self.clock(), self.done_files, time.monotonic()
        print(self.status(), file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
