"""Compiled regions against the eager path, paired in one process: what ``compile=`` gains on this CPU.

    python benchmarks/compile_ab.py --dtype bfloat16              # 0.6B shape, random weights, 8 rounds
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/compile_ab.py --dtype bfloat16   # as without AMX

Two embedders of one checkpoint, ``compile=True`` (timed after its compile) and ``compile=False``, embed the same
24 texts in every round, fresh words each round, the order of the two alternated. Printed: the compile's
one-time seconds, each path's median round, and the median of the per-round ratios eager/compiled (above 1: the
compiled path is faster). ``bench.py`` has the contest with other libraries; this is the option's own A/B.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from qwen3_bench.report import cpu_info
from qwen3_bench.workload import make_texts

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--shape", default="0.6B", choices=["0.6B", "tiny"], help="random checkpoint shape to build")
    p.add_argument("--model", help="an embedding checkpoint instead of a random one")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--texts", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(HERE / ".cache"), help="where random checkpoints are kept")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from qwen3_retrieval import Qwen3Embedder
    from qwen3_retrieval.testing import make_embedding_checkpoint

    model = args.model or str(Path(args.cache) / args.shape / "embedding")
    if not args.model and not (Path(model) / "config.json").exists():
        make_embedding_checkpoint(Path(model), shape=args.shape, dtype="bfloat16")
    compiled = Qwen3Embedder(model, device="cpu", dtype=args.dtype, compile=True)
    start = time.perf_counter()
    if not compiled.wait_compiled():
        raise SystemExit("the regions did not compile here (no C++ compiler?); nothing to compare")
    compile_s = time.perf_counter() - start
    eager = Qwen3Embedder(model, device="cpu", dtype=args.dtype, compile=False)
    warm = make_texts(args.texts, 10, 400, args.texts, 0)
    compiled.embed_documents(warm)
    eager.embed_documents(warm)
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    for round_ in range(args.rounds):
        texts = make_texts(args.texts, 10, 400, args.texts, 1 + round_)
        for name in ("compiled", "eager") if round_ % 2 else ("eager", "compiled"):
            start = time.perf_counter()
            (compiled if name == "compiled" else eager).embed_documents(texts)
            times[name].append(time.perf_counter() - start)
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"], strict=True)]
    result = {
        "machine": cpu_info(),
        "threads": args.threads,
        "dtype": args.dtype,
        "shape": args.shape if not args.model else args.model,
        "compile_s": round(compile_s, 1),
        "median_round_s": {name: round(statistics.median(values), 3) for name, values in times.items()},
        "median_paired_ratio_eager_over_compiled": round(statistics.median(ratios), 3),
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
