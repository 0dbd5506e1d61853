"""A tiny run of the benchmark: every contender runs in its own process and the report is complete, on any CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpu_kinds import AVX2_ONLY

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def bench(out: Path, progress: Callable[[str], None], *options: str, env: dict[str, str] | None = None) -> Any:
    """Run the benchmark, echoing its lines as they come; return its report."""
    command = [sys.executable, str(BENCH), "--shape", "tiny", "--quick", "--out", str(out), "--cache", str(out / "c")]
    with subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    ) as run:
        assert run.stdout is not None
        lines: list[str] = []
        for line in run.stdout:
            if not any(seen.startswith("Machine:") for seen in lines[-1:]) and not line.startswith("Machine:"):
                progress(line.rstrip())  # what runs now; the report itself is checked below, not echoed
            lines.append(line)
    assert run.returncode == 0, "".join(lines[-40:])
    return json.loads((out / "results.json").read_text())


def test_benchmark_smoke_run(tmp_path: Path, progress: Callable[[str], None]) -> None:
    report = bench(tmp_path, progress)
    native_bf16 = report["cpu"]["native_bf16"]
    bf16 = ["ours_bf16"] if native_bf16 else []
    assert report["matmul_gflops"] > 0
    embedding, reranking, short, many_queries, many_reranks = report["results"]
    tasks = {"embedding": embedding, "reranking": reranking}
    assert [r["contender"] for r in tasks["embedding"]["rows"]] == [
        "ours",
        "st_batch32",
        "st_batch10",
        "st_one_per_call",
        *bf16,
    ]
    assert [r["contender"] for r in tasks["reranking"]["rows"]] == [
        "ours",
        "model_card_batch",
        "model_card_one_per_call",
        "st_cross_encoder",
        *bf16,
    ]
    assert [r["contender"] for r in short["rows"]] == ["ours", "ours_plain"]
    for block in (many_queries, many_reranks):
        assert [r["contender"] for r in block["rows"]] == ["ours_merged", "ours_thread_per_call", "ours_one_at_a_time"]
    assert set(report["matmul_gflops_by_method"]["float32"]) == {"torch", "oneDNN packed"}
    for block in report["results"]:
        assert block["tokens"] > 0
        for row in block["rows"]:
            assert row["status"] == "ok", row
            assert row["median_s"] > 0 and row["tokens_per_s"] > 0 and row["our_speedup"] > 0
    if native_bf16:  # bfloat16 is reported with its fidelity to float32
        bf16_embed = tasks["embedding"]["rows"][-1]["fidelity"]
        assert 0.9 < bf16_embed["min_cosine"] <= bf16_embed["mean_cosine"] <= 1.0 + 1e-6
        bf16_rerank = tasks["reranking"]["rows"][-1]["fidelity"]
        assert 0 <= bf16_rerank["max_abs_score_diff"] < 0.2 and -1 <= bf16_rerank["spearman"] <= 1
    # The reranker's executed work, with its floor.
    assert 0 < tasks["reranking"]["our_gflop"] < tasks["reranking"]["gflop"]
    assert (tmp_path / "results.png").stat().st_size > 0
    shown = (tmp_path / "results.md").read_text()
    assert "qwen3-retrieval" in shown
    # The report names the CPU and the instruction sets its figures depend on.
    assert report["cpu"]["model"] in shown and "torch kernels" in shown


def test_benchmark_on_a_cpu_without_native_bfloat16_skips_those_rows(
    tmp_path: Path, progress: Callable[[str], None]
) -> None:
    report = bench(tmp_path, progress, "--only", "ours", "ours_bf16", env=AVX2_ONLY)
    assert report["cpu"]["native_bf16"] is False and report["cpu"]["aten_capability"] == "AVX2"
    note = report["cpu"]["note"]
    assert note.startswith("bfloat16 rows skipped") and ("ONEDNN_MAX_CPU_ISA=AVX2" in note or "avx512_bf16" in note)
    assert note in (tmp_path / "results.md").read_text()
    assert set(report["matmul_gflops_by_method"]) == {"float32"}  # no bfloat16 GEMM probe
    rows = [row for block in report["results"] for row in block["rows"]]
    assert rows and {row["contender"] for row in rows} == {"ours"} and all(row["status"] == "ok" for row in rows)


def test_index_benchmark_smoke_run(tmp_path: Path) -> None:
    script = BENCH.parent / "index_bench.py"
    command = [sys.executable, str(script), "--shape", "tiny", "--files", "6", "--cache", str(tmp_path / "c")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.strip().splitlines()[-1]
    index_s, embed_s, ratio = (cell.strip() for cell in table.strip("|").split("|"))
    assert index_s.endswith(" s") and embed_s.endswith(" s") and ratio.endswith("x"), table
    assert "indexed 6 files, 6 passages" in done.stdout


def test_index_benchmark_pdf_smoke_run(tmp_path: Path) -> None:
    script = BENCH.parent / "index_bench.py"
    command = [sys.executable, str(script), "--shape", "tiny", "--files", "3", "--pdf", "--cache", str(tmp_path / "c")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "indexed 3 files, 12 passages" in done.stdout, done.stdout  # one passage a page
    cells = [cell.strip() for cell in done.stdout.strip().splitlines()[-1].strip("|").split("|")]
    assert len(cells) == 5 and all(c.endswith(" s") for c in cells[:3]) and all(c.endswith("x") for c in cells[3:])


def test_vl_benchmark_smoke_run(tmp_path: Path, progress: Callable[[str], None]) -> None:
    """The Qwen3-VL benchmark on tiny checkpoints: both contenders run, agree, and the report is written."""
    command = [sys.executable, str(BENCH.with_name("vl_bench.py")), "--shape", "tiny", "--rounds", "1",
               "--out", str(tmp_path), "--cache", str(tmp_path / "c")]  # fmt: skip
    progress("the Qwen3-VL benchmark on tiny checkpoints ...")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "vl.json").read_text())
    assert set(report["runs"]) == {"ours", "official"}
    assert all(difference < 1e-5 for difference in report["fidelity"].values()), report["fidelity"]
    table = (tmp_path / "vl.md").read_text()
    assert "| embed 4 texts + 4 images |" in table and "| rerank 4 texts + 4 images |" in table
