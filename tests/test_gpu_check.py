"""The GPU check's smoke form: on a CPU it checks the dispatch and both kernels' equality, and fails on a difference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_form(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(CHECK), "--smoke", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((tmp_path / "results.json").read_text())
    names = [c["check"] for c in report["checks"]]
    assert all(c["ok"] for c in report["checks"]) and "results" not in report  # the smoke form times nothing
    for kernel in ("SDPA loop", "varlen stand-in"):
        assert f"embedding float32, {kernel}" in names and f"reranker float32, {kernel}" in names
    assert {"dispatch rule", "default dtype", "sdpa kernel (float32)", "varlen kernel (float32)"} <= set(names)
    assert "FAIL" not in (tmp_path / "results.md").read_text()
