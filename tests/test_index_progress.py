"""Indexing progress: passages with rate and ETA, as a bar or as status lines every few seconds."""

from __future__ import annotations

import io
import time

import pytest

from qwen3_retrieval.rag import progress
from qwen3_retrieval.rag.progress import STATUS_SECONDS, IndexProgress, progress_mode


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_status_lines_come_every_few_seconds_with_an_estimate_a_rate_and_an_eta() -> None:
    clock, out = Clock(), io.StringIO()
    shown = IndexProgress(files=10, size=10_000, mode="lines", stream=out, clock=clock)
    clock.now += 1
    shown.advance(files=2, passages=40, size=2_000)  # too soon for a line
    assert out.getvalue() == ""
    clock.now += STATUS_SECONDS  # 6 s in: 80 passages from 4 of 10 files' 4,000 of 10,000 bytes
    shown.advance(files=2, passages=40, size=2_000)
    # 80 passages in 6 s: 13.3/s; about 80 * 10,000 / 4,000 = 200 in all; 120 left at 13.3/s is 9 s.
    assert out.getvalue() == (
        "qwen3-rag: indexed 80 of about 200 passages (4 of 10 files), 13.3 passages/s, about 9s left\n"
    )
    clock.now += 1
    shown.advance(files=6, passages=100, size=6_000)
    shown.close()  # the last line is exact
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("qwen3-rag: indexed 180 of about 180 passages (10 of 10 files), 25.7 passages/s")


def test_the_bar_counts_passages_and_ends_on_the_exact_total() -> None:
    out = io.StringIO()
    shown = IndexProgress(files=3, size=300, mode="bar", stream=out)
    shown.advance(files=1, passages=5, size=100)
    assert shown.bar.total == 15 and shown.bar.n == 5
    shown.advance(files=2, passages=7, size=200)
    shown.close()
    assert shown.bar.total == 12 and shown.bar.n == 12
    assert "12/12" in out.getvalue() and "passage" in out.getvalue() and "3/3 files" in out.getvalue()


def test_nothing_is_shown_when_off_or_when_nothing_is_to_index() -> None:
    for files, mode in ((3, "off"), (0, "lines"), (0, "bar")):
        out = io.StringIO()
        shown = IndexProgress(files=files, size=10, mode=mode, stream=out, clock=Clock())
        shown.close()
        assert out.getvalue() == "" and shown.bar is None


def test_progress_modes() -> None:
    assert progress_mode(True, io.StringIO()) == "lines"  # not a terminal
    assert progress_mode(False) == "off" and progress_mode("bar") == "bar"
    with pytest.raises(ValueError, match=r"progress='dots' is not one of bar, lines, off"):
        progress_mode("dots")


def test_status_lines_keep_coming_while_one_batch_takes_long(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a line came only when a batch ended, 30-60 s apart with a real model on a CPU.
    monkeypatch.setattr(progress, "STATUS_SECONDS", 0.2)
    out = io.StringIO()
    shown = IndexProgress(files=4, size=400, mode="lines", stream=out)
    time.sleep(1.1)  # one batch being embedded: nothing advances
    shown.advance(files=4, passages=8, size=400)
    shown.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, lines  # about 5 in 1.1 s; fewer only on a very busy machine
    assert lines[0].startswith("qwen3-rag: indexing the first of 4 files, 0s so far")
    assert lines[-1].startswith("qwen3-rag: indexed 8 of about 8 passages (4 of 4 files)")
