"""The workload: the inputs each round gets, and what the work costs (tokens, FLOPs, the machine's GEMM rate)."""

from __future__ import annotations

import random
import time
from typing import Any

WORDS = [
    "the",
    "capital",
    "city",
    "river",
    "mountain",
    "data",
    "vector",
    "index",
    "search",
    "model",
    "query",
    "passage",
    "answer",
    "energy",
    "light",
    "music",
    "history",
    "science",
    "computer",
    "network",
    "language",
    "system",
    "water",
    "planet",
    "force",
    "gravity",
    "market",
    "price",
    "company",
    "law",
]


def make_texts(n: int, low: int, high: int, seed: int, round_: int = 0) -> list[str]:
    """``n`` texts of ``low`` to ``high`` words; every round has the same lengths and other words."""
    lengths = random.Random(seed)
    words = random.Random(seed * 1000 + round_)
    return [" ".join(words.choices(WORDS, k=lengths.randint(low, high))) + "." for _ in range(n)]


def make_query(round_: int) -> str:
    return f"what drives the price of {WORDS[round_ % len(WORDS)]}"


def matmul_gflops(threads: int, device: str, dtype: str = "float32") -> dict[str, float]:
    """This machine's GEMM rates in GFLOP/s on the 0.6B MLP's shape (1024 tokens x 1024 -> 3072), by method.

    ``torch``: ``F.linear`` (MKL on CPU). ``oneDNN packed``: weights reordered once for oneDNN, as vLLM's CPU
    backend and inductor's freezing do (CPU only). The limit is the best of them.
    """
    import torch

    torch.set_num_threads(threads)
    kind = getattr(torch, dtype)
    x = torch.randn(1024, 1024, device=device, dtype=kind)
    w = torch.randn(3072, 1024, device=device, dtype=kind) * 0.02
    calls = {"torch": lambda: torch.nn.functional.linear(x, w)}
    if device == "cpu" and torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
        calls["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    rates = {}
    for name, call in calls.items():
        for _ in range(3):
            call()
        best = float("inf")
        for _ in range(5):  # best of five: the machine's rate, not its noise
            start = time.perf_counter()
            for _ in range(5):
                call()
            best = min(best, (time.perf_counter() - start) / 5)
        rates[name] = 2 * 1024 * 1024 * 3072 / best / 1e9
    return rates


def workload(model: str, task: str, work: dict[str, Any]) -> tuple[int, float, float]:
    """Real (unpadded) tokens of the work, its forward-pass FLOPs, and the FLOPs our path actually runs.

    FLOPs come from the model's config and our prompts; the first count is the plain path's (every pair whole),
    the same for every contender, so its rate compares them. The reranker runs the shared prefix once, so it
    runs fewer: that count divided by the matrix-multiply limit is the fastest our path could be here.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    attn = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_token = 2 * layers * (h * attn + 2 * h * kv + attn * h + 3 * h * inter)

    def causal(n: int, before: int = 0) -> int:  # QK^T and AV of n queries over ``before`` + causal keys
        return 2 * layers * attn * (2 * n * before + n * n)

    if task == "embedding":
        from qwen3_retrieval import DEFAULT_INSTRUCTION, Qwen3Embedder
        from qwen3_retrieval.prompts import embedding_query

        texts = work.get("texts") or [embedding_query(q, DEFAULT_INSTRUCTION) for q in work["queries"]]
        lengths = [len(s) for s in Qwen3Embedder(model, device="cpu").processor.documents(texts)]
        flops = float(per_token * sum(lengths) + sum(causal(n) for n in lengths))
        return sum(lengths), flops, flops
    from qwen3_retrieval import DEFAULT_INSTRUCTION, Qwen3Reranker

    processor = Qwen3Reranker(model, device="cpu").processor
    tokens, plain, shared = 0, 0, 0
    for request in work.get("requests") or [work]:
        prefix, tails = processor.prompts(request["query"], request["documents"], DEFAULT_INSTRUCTION)
        lengths = [len(prefix) + len(t) for t in tails]
        tokens += sum(lengths)
        plain += per_token * sum(lengths) + sum(causal(n) for n in lengths)
        shared += per_token * (len(prefix) + sum(len(t) for t in tails)) + causal(len(prefix))
        shared += sum(causal(len(t), len(prefix)) for t in tails)
    return tokens, float(plain), float(shared)


def fidelity(task: str, reference: Any, other: Any) -> dict[str, float]:
    """How close another dtype's output is to float32: vector cosines, or score error and rank agreement."""
    import numpy as np

    if task == "embedding":
        cos = (reference * other).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(other, axis=1)
        return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    ranks = [np.argsort(np.argsort(-x)) for x in (reference, other)]
    n = len(reference)
    spearman = 1 - 6 * float(((ranks[0] - ranks[1]) ** 2).sum()) / (n * (n * n - 1)) if n > 1 else 1.0
    top = min(5, n)
    overlap = len(set(np.argsort(-reference)[:top]) & set(np.argsort(-other)[:top])) / top
    return {"max_abs_score_diff": float(np.abs(reference - other).max()), "spearman": spearman, "top5_overlap": overlap}
