"""The CPU kernel choices behind the packed decoder, timed against their alternatives on this machine.

    python benchmarks/kernel_probe.py            # 2 threads, the 0.6B shapes, about two minutes
    python benchmarks/kernel_probe.py --out DIR  # also writes DIR/kernel-probe.md and .json

Not a contest with another library (``bench.py`` is that): each row is one of our own kernel choices next to an
alternative that was tried in its place, on the 0.6B model's shapes and random data, with medians of alternated
repeats. The attention rows run one packed row of 24 sequences whose lengths follow ``bench.py``'s embedding
workload; their differences to the chosen kernel are printed, so an alternative that is faster but wrong shows.

- Linear layers, float32: oneDNN-packed multiplies in chunks of 256 to 6144 rows (the decoder uses 512).
- Linear layers, bfloat16: q, k and v as three multiplies or one over the joined weights (vLLM joins them).
- Attention: the per-sequence fused causal SDPA loop (ours), as it is and with each sequence padded to a multiple
  of 32 rows (ours in bfloat16 on a CPU with AMX), against right-padded buckets of similar lengths through one
  SDPA call each, and inductor's ``flex_attention`` over the whole row with a document mask.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qwen3_bench.report import cpu_info

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 1024, 3072, 16, 8, 128, 28


def timed(functions: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run alternately (order reversed every other round) after a warm-up."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_ in range(repeats):
        names = list(functions) if round_ % 2 == 0 else list(functions)[::-1]
        for name in names:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def packed_linear(weight: torch.Tensor, chunk: int) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, chunk)
    return lambda x: [
        torch.ops.mkldnn._linear_pointwise(x[s : s + chunk], packed, None, "none", [], "")
        for s in range(0, x.shape[0], chunk)
    ]


def run_all(runs: list[Callable[[torch.Tensor], list[torch.Tensor]]], x: torch.Tensor) -> None:
    for run in runs:
        run(x)


def float32_chunks(rows: int, repeats: int) -> list[dict[str, Any]]:
    shapes = {"qkv": (HIDDEN, [2048, 1024, 1024]), "o": (2048, [HIDDEN]), "gate_up": (HIDDEN, [INTERMEDIATE] * 2)}
    shapes["down"] = (INTERMEDIATE, [HIDDEN])
    out = []
    for name, (inputs, outputs) in shapes.items():
        x = torch.randn(rows, inputs)
        weights = [torch.randn(n, inputs) * 0.02 for n in outputs]
        flops = 2 * rows * inputs * sum(outputs)
        calls: dict[str, Callable[[], Any]] = {}
        for chunk in (256, 512, 1024, 2048, 6144):
            runs = [packed_linear(w, chunk) for w in weights]
            calls[f"{chunk} rows"] = functools.partial(run_all, runs, x)
        for label, seconds in timed(calls, repeats).items():
            out.append(
                {"probe": "float32 linear chunk", "shape": name, "variant": label, "gflops": flops / seconds / 1e9}
            )
    return out


def bfloat16_qkv(rows: int, repeats: int) -> list[dict[str, Any]]:
    x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16)
    weights = [(torch.randn(n, HIDDEN) * 0.02).to(torch.bfloat16) for n in (2048, 1024, 1024)]
    joined = torch.cat(weights)
    flops = 2 * rows * HIDDEN * 4096
    calls = {
        "three multiplies": lambda: [F.linear(x, w) for w in weights],
        "one joined multiply": lambda: F.linear(x, joined),
    }
    return [
        {"probe": "bfloat16 q/k/v", "shape": f"{rows} rows", "variant": label, "gflops": flops / seconds / 1e9}
        for label, seconds in timed(calls, repeats).items()
    ]


def attention(dtype: torch.dtype, repeats: int) -> list[dict[str, Any]]:
    """One layer's attention over a packed row, in the three ways; seconds are scaled to all layers."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    draw = random.Random(1)
    lengths = sorted((int(draw.randint(10, 400) * 1.3) + 3 for _ in range(24)), reverse=True)
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    tokens = starts[-1]
    q = torch.randn(tokens, HEADS, HEAD_DIM, dtype=dtype)
    k, v = (torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=dtype) for _ in range(2))

    def heads_first(x: torch.Tensor, length: int) -> torch.Tensor:
        return x.view(1, length, x.shape[1], HEAD_DIM).transpose(1, 2)

    def per_sequence() -> torch.Tensor:
        out = q.new_empty(q.shape)
        for start, length in zip(starts, lengths, strict=False):
            span = slice(start, start + length)
            attended = F.scaled_dot_product_attention(
                heads_first(q[span], length), heads_first(k[span], length), heads_first(v[span], length),
                is_causal=True, enable_gqa=True,
            )  # fmt: skip
            out[span] = attended[0].transpose(0, 1)
        return out

    def padded_rows(multiple: int = 32) -> torch.Tensor:  # ours in bfloat16 where AMX runs attention
        out = q.new_empty(q.shape)
        for start, length in zip(starts, lengths, strict=False):
            span, rows = slice(start, start + length), -(-length // multiple) * multiple
            padded = [F.pad(x[span], (0, 0, 0, 0, 0, rows - length)) for x in (q, k, v)]
            attended = F.scaled_dot_product_attention(
                *(heads_first(x, rows) for x in padded), is_causal=True, enable_gqa=True
            )
            out[span] = attended[0].transpose(0, 1)[:length]
        return out

    def padded_buckets(waste: float = 0.25) -> torch.Tensor:
        out, i = q.new_empty(q.shape), 0
        while i < len(lengths):
            j = i + 1
            while (
                j < len(lengths)
                and (j + 1 - i) * lengths[i] - sum(lengths[i : j + 1]) <= waste * (j + 1 - i) * lengths[i]
            ):
                j += 1
            longest, members = lengths[i], range(i, j)
            batch = [x.new_zeros(j - i, longest, x.shape[1], HEAD_DIM) for x in (q, k, v)]
            for row, n in enumerate(members):
                for padded, x in zip(batch, (q, k, v), strict=True):
                    padded[row, : lengths[n]] = x[starts[n] : starts[n] + lengths[n]]
            qb, kb, vb = (x.transpose(1, 2) for x in batch)
            attended = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True).transpose(1, 2)
            for row, n in enumerate(members):
                out[starts[n] : starts[n] + lengths[n]] = attended[row, : lengths[n]]
            i = j
        return out

    document = torch.cat([torch.full((length,), n) for n, length in enumerate(lengths)])
    mask = create_block_mask(
        lambda b, h, qi, ki: (document[qi] == document[ki]) & (qi >= ki), 1, 1, tokens, tokens, device="cpu"
    )
    flex = torch.compile(flex_attention, dynamic=False)
    qh, kh, vh = (x.transpose(0, 1)[None].contiguous() for x in (q, k, v))

    def flex_row() -> torch.Tensor:
        return flex(qh, kh, vh, block_mask=mask, enable_gqa=True)[0].transpose(0, 1)

    reference = per_sequence().float()
    calls = {
        "per-sequence SDPA": per_sequence,
        "per-sequence SDPA, each padded to a multiple of 32 rows": padded_rows,
        "padded buckets": padded_buckets,
        "flex_attention": flex_row,
    }
    differences = {name: (call().float() - reference).abs().max().item() for name, call in calls.items()}
    name = str(dtype).removeprefix("torch.")
    return [
        {"probe": f"{name} attention", "shape": f"24 sequences, {tokens} tokens", "variant": label,
         "seconds_all_layers": seconds * LAYERS, "max_difference": differences[label]}
        for label, seconds in timed(calls, repeats).items()
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="a folder for kernel-probe.md and kernel-probe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = float32_chunks(6144, args.repeats) + bfloat16_qkv(976, args.repeats)
    rows += attention(torch.bfloat16, args.repeats) + attention(torch.float32, args.repeats)
    info = cpu_info()
    cpu = f"{info['model']} (torch kernels {info['aten_capability']})"
    lines = [f"CPU: {cpu}, {args.threads} threads, torch {torch.__version__}.", ""]
    lines += [
        "| probe | shape | variant | GFLOP/s | seconds (28 layers) | max difference |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        gflops = f"{row['gflops']:.0f}" if "gflops" in row else ""
        seconds = f"{row['seconds_all_layers']:.3f}" if "seconds_all_layers" in row else ""
        difference = f"{row['max_difference']:.2g}" if "max_difference" in row else ""
        lines.append(f"| {row['probe']} | {row['shape']} | {row['variant']} | {gflops} | {seconds} | {difference} |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernel-probe.md").write_text("\n".join(lines) + "\n")
        (out / "kernel-probe.json").write_text(
            json.dumps({"cpu": cpu, "threads": args.threads, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
