"""``qwen3-rag index --ray`` against one process: files per second, and the fixed cost of starting Ray.

    python benchmarks/ray_bench.py                    # 300 small Markdown files, the tiny test checkpoint
    python benchmarks/ray_bench.py --files 100 --embedders 1,2,4

Each run is the command itself (a fresh process, as a user runs it) into a fresh Milvus Lite file: one process,
then ``--ray`` (a Ray started on this machine for the run, with all its CPUs) with each number of embedding
actors. A one-file folder is indexed the same ways first: its time, less the one-process time, is what starting
Ray costs. Files per second are the folder's files over the run's wall time, and over the time beyond the
one-file run (the rate once running).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--embedders", default="1,2")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from qwen3_retrieval.testing import tiny_checkpoint

    model = str(tiny_checkpoint("embedding"))
    modes: list[tuple[str, list[str]]] = [("one process", [])]
    for n in map(int, args.embedders.split(",")):
        modes.append((f"Ray, {n} actor{'s' if n > 1 else ''}", ["--ray", "--ray-embedders", str(n)]))
    with tempfile.TemporaryDirectory() as scratch:
        one, many = Path(scratch) / "one", Path(scratch) / "many"
        write_notes(one, 1)
        write_notes(many, args.files)
        rows: list[tuple[str, float, float]] = []
        for name, extra in modes:
            base = timed(one, Path(scratch) / f"{len(rows)}-one.db", model, extra)
            full = timed(many, Path(scratch) / f"{len(rows)}-many.db", model, extra)
            rows.append((name, base, full))
            print(f"{name}: 1 file {base:.1f} s, {args.files} files {full:.1f} s", flush=True)
    print(f"\n| run | 1 file | {args.files} files | files/s | files/s beyond the 1-file run | Ray's start |")
    print("|---|---|---|---|---|---|")
    for name, base, full in rows:
        start = "" if name == "one process" else f"{base - rows[0][1]:+.1f} s"
        rate = args.files / full
        print(
            f"| {name} | {base:.1f} s | {full:.1f} s | {rate:.1f} | {(args.files - 1) / (full - base):.1f} | {start} |"
        )


def timed(folder: Path, uri: Path, model: str, extra: list[str]) -> float:
    command = [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(folder), "--uri", str(uri),
               "--embedding-model", model, "--device", "cpu", *extra]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return took


def write_notes(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        text = " ".join(f"The river {i} runs past the mountain city {j}." for j in range(12))
        (folder / f"note-{i:04d}.md").write_text(f"# Note {i}\n\n{text}\n\n## Banks\n\nWillows {i} line its banks.\n")


if __name__ == "__main__":
    main()
