"""The report: the machine line, the Markdown table and the chart."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

# Any of these makes bfloat16 matrix multiplies native (not emulated through float32).
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
# The instruction sets that decide our kernels' speed, as /proc/cpuinfo names them.
INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx_ne_convert")


def cpu_info() -> dict[str, Any]:
    """The CPU's model, the instruction sets that matter, what torch may use of them, and whether bf16 is native.

    bfloat16 counts as native where the CPU has one of :data:`NATIVE_BF16` and oneDNN may use bf16 at all
    (``ONEDNN_MAX_CPU_ISA``, as an emulated narrower CPU sets it, can forbid it; oneDNN then refuses bf16 weight
    packing outright, which is how an AVX2-only CPU crashed the benchmark).
    """
    import torch

    model, flags = "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    present = {name: name in flags for name in INSTRUCTION_SETS}
    onednn_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    native = onednn_bf16 and any(present[name] for name in NATIVE_BF16)
    missing = " or ".join(NATIVE_BF16)
    if native:
        note = ""
    elif any(present[name] for name in NATIVE_BF16):
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        note = f"bfloat16 rows skipped: oneDNN may not use this CPU's bf16 instructions (ONEDNN_MAX_CPU_ISA={cap})"
    else:
        note = f"bfloat16 rows skipped: this CPU has no native bfloat16 ({missing})"
    return {
        "model": model,
        "instruction_sets": present,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "native_bf16": native,
        "note": note,
    }


def machine(args: argparse.Namespace) -> str:
    import platform

    import torch

    info = cpu_info()
    sets = ", ".join(name for name, present in info["instruction_sets"].items() if present) or "none of " + ", ".join(
        INSTRUCTION_SETS
    )
    cpu = f"{info['model']} ({sets}; torch kernels {info['aten_capability']})"
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    return f"{cpu}, {args.threads} threads, {args.device}, float32, {versions}"


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    peaks = report["matmul_gflops_by_dtype"]
    methods = "; ".join(
        f"{dtype}: " + ", ".join(f"{name} {rate:.0f}" for name, rate in by_method.items())
        for dtype, by_method in report["matmul_gflops_by_method"].items()
    )
    bf16 = f", {peaks['bfloat16']:.1f} in bfloat16" if "bfloat16" in peaks else ""
    lines = [
        f"Machine: {report['machine']}; matrix-multiply limit {peaks['float32']:.1f} GFLOP/s in float32{bf16} "
        f"(the best GEMM rate measured here, GFLOP/s: {methods}).",
        *([f"{report['cpu']['note']}."] if report.get("cpu", {}).get("note") else []),
        "",
        "| task | contender | median s | tokens/s | our speed-up | peak RSS MB | matmul limit used |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for block in report["results"]:
        for row in block["rows"]:
            fmt = _formatter(row["status"][:40])
            # A row that ran has no speed-up when our own row failed: say that, not its "ok".
            missing = "ours failed" if row["status"] == "ok" else row["status"][:40]
            speedup = missing if row["our_speedup"] is None else f"{row['our_speedup']:.2f}x"
            lines.append(
                f"| {block['name']} ({block['tokens']} tokens) | {row['label']} | {fmt(row['median_s'], '.2f')} | "
                f"{fmt(row['tokens_per_s'], '.0f')} | {speedup} | "
                f"{fmt(row['peak_rss_mb'], '.0f')} | {fmt(row['matmul_fraction'], '.0%')} |"
            )
            if "our_bf16_speedup" in row:
                notes.append(
                    f"- {block['name']}, bfloat16 against bfloat16: qwen3-retrieval is "
                    f"{row['our_bf16_speedup']:.2f}x {row['label']}."
                )
            if "fidelity" in row:
                measures = ", ".join(f"{k} {v:.6g}" for k, v in row["fidelity"].items())
                notes.append(f"- {block['name']}, {row['label']} vs float32: {measures}.")
        if block["our_gflop"] < block["gflop"]:
            notes.append(
                f"- {block['name']}: our path runs {block['our_gflop']:.0f} of the plain {block['gflop']:.0f} GFLOP "
                f"(shared prefix once); at the float32 matrix-multiply limit that takes at least "
                f"{block['our_floor_s']:.2f} s."
            )
    lines += ["", "The matmul column counts the plain path's FLOPs for every row, so it compares the rows.", ""]
    return "\n".join(lines + notes) + "\n"


def _formatter(missing: str) -> Any:
    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if value is not None else missing

    return fmt


def _colour(contender: str) -> str:
    if contender == "ours":
        return "tab:green"
    return "yellowgreen" if contender.startswith("ours_") else "tab:gray"  # our other paths, and the peers


def chart(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    blocks = report["results"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(5 * len(blocks), 4), squeeze=False)
    for ax, block in zip(axes[0], blocks):
        rows = [r for r in block["rows"] if r["tokens_per_s"]]
        ax.barh(
            [r["contender"] for r in rows],
            [r["tokens_per_s"] for r in rows],
            color=[_colour(r["contender"]) for r in rows],
        )
        ax.set_title(block["name"])
        ax.set_xlabel("tokens/s (higher is better)")
        ax.invert_yaxis()
    fig.suptitle(report["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
