"""A tiny run of the benchmark: every contender runs in its own process and the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--shape",
            "tiny",
            "--quick",
            "--out",
            str(tmp_path),
            "--cache",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["matmul_gflops"] > 0
    embedding, reranking, short, many_queries, many_reranks = report["results"]
    tasks = {"embedding": embedding, "reranking": reranking}
    assert [r["contender"] for r in tasks["embedding"]["rows"]] == [
        "ours",
        "st_batch32",
        "st_batch10",
        "st_one_per_call",
        "ours_bf16",
    ]
    assert [r["contender"] for r in tasks["reranking"]["rows"]] == [
        "ours",
        "model_card_batch",
        "model_card_one_per_call",
        "st_cross_encoder",
        "ours_bf16",
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
    # bfloat16 is reported with its fidelity to float32, and the reranker's executed work with its floor.
    bf16_embed = tasks["embedding"]["rows"][-1]["fidelity"]
    assert 0.9 < bf16_embed["min_cosine"] <= bf16_embed["mean_cosine"] <= 1.0 + 1e-6
    bf16_rerank = tasks["reranking"]["rows"][-1]["fidelity"]
    assert 0 <= bf16_rerank["max_abs_score_diff"] < 0.2 and -1 <= bf16_rerank["spearman"] <= 1
    assert 0 < tasks["reranking"]["our_gflop"] < tasks["reranking"]["gflop"]
    assert (tmp_path / "results.png").stat().st_size > 0
    assert "qwen3-retrieval" in (tmp_path / "results.md").read_text()
