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
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONTENDERS = {
    "embedding": ["ours", "st_batch32", "st_batch10", "st_one_per_call", "ours_bf16"],
    "reranking": ["ours", "model_card_batch", "model_card_one_per_call", "st_cross_encoder", "ours_bf16"],
}
# Short candidates: the shared-prefix fast path against our plain path (every prompt run whole).
PREFIX_CONTENDERS = ["ours", "ours_plain"]
# With --vllm-python: a real vLLM server (same float32 weights and token ids), our client on that server, and
# vllm.LLM in process through our engine. They run last in each job, while the server is up.
VLLM_CONTENDERS = ["vllm_server", "ours_vllm_http", "ours_vllm"]
# Many small calls at once (64 single-query embeds, 16 ten-candidate reranks): merged into shared batches (the
# default), each call alone in its own thread, and one call after another.
CONCURRENT_CONTENDERS = ["ours_merged", "ours_thread_per_call", "ours_one_at_a_time"]
# Rows that are our own fast paths in another dtype, reported beside the float32 comparison with their fidelity.
OWN_VARIANTS = {"ours_bf16": "bfloat16"}
LABELS = {
    "ours": "qwen3-retrieval",
    "ours_bf16": "qwen3-retrieval, bfloat16 (fast path)",
    "ours_plain": "qwen3-retrieval without shared-prefix reuse",
    "vllm_server": "vLLM-CPU server, token ids over HTTP",
    "ours_vllm_http": "qwen3-retrieval on that vLLM server (base_url=)",
    "ours_vllm": "qwen3-retrieval, vLLM in process (engine='vllm')",
    "st_cross_encoder": "sentence-transformers CrossEncoder (batch 32)",
    "ours_merged": "qwen3-retrieval, concurrent calls merged (default)",
    "ours_thread_per_call": "qwen3-retrieval, each call in its own thread (batch_wait_ms=None)",
    "ours_one_at_a_time": "qwen3-retrieval, one call after another",
    "st_batch32": "sentence-transformers, batch 32 (LangChain HuggingFaceEmbeddings)",
    "st_batch10": "sentence-transformers, batch 10 (LlamaIndex default)",
    "st_one_per_call": "sentence-transformers, one text per call (tutorial)",
    "model_card_batch": "model card code, all pairs in one batch",
    "model_card_one_per_call": "model card code, one pair per call",
}
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


# --- children: one contender each ---------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    warm_up, *rounds = json.loads(Path(args.inputs).read_text())["rounds"]
    run = _prepare(args.contender, args.task, args.model, args.device, args.url)
    times: list[float] = []
    status = "ok"
    try:
        output = run(warm_up)
        # Every timed round has other words (same lengths): no engine can serve a round from a cache of the last.
        for work in rounds:
            start = time.perf_counter()
            run(work)
            times.append(time.perf_counter() - start)
        if args.save:  # our rows keep their output, to measure the fidelity of other dtypes
            import numpy as np

            np.save(args.save, np.asarray(output, dtype=np.float32))
    except (RuntimeError, MemoryError) as err:  # out of memory is a result
        status = f"failed: {type(err).__name__}: {str(err)[:200]}"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "status": status, "peak_rss_mb": peak_mb}))


def _prepare(contender: str, task: str, model: str, device: str, url: str | None) -> Callable[[dict[str, Any]], Any]:
    """Load ``contender`` once; return the call that runs one round of work on it."""
    import torch

    dtype = OWN_VARIANTS.get(contender, "float32")
    engine: dict[str, Any] = {"device": device, "dtype": dtype}
    if contender == "ours_vllm_http":
        engine = {"base_url": url}
    elif contender == "ours_vllm":
        engine = {"engine": "vllm", "engine_options": {"kv_cache_memory_bytes": VLLM_KV_BYTES}}
    elif contender == "ours_thread_per_call":
        engine["batch_wait_ms"] = None  # each call alone in its own thread: what 0.2 did
    if contender == "vllm_server":
        return _vllm_server_call(task, model, str(url))
    if contender in CONCURRENT_CONTENDERS:
        return _concurrent_call(contender, task, model, engine)
    if task == "embedding":
        if contender.startswith("ours"):
            from qwen3_retrieval import Qwen3Embedder

            embedder = Qwen3Embedder(model, **engine)
            return lambda work: embedder.embed_documents(work["texts"])
        from sentence_transformers import SentenceTransformer

        # transformers 5 loads in the checkpoint's dtype by default (bfloat16 here); compare like for like.
        st = SentenceTransformer(model, device=device, model_kwargs={"dtype": torch.float32})
        st.max_seq_length = 8192
        if contender == "st_one_per_call":
            return lambda work: [st.encode([t]) for t in work["texts"]]
        size = 32 if contender == "st_batch32" else 10
        return lambda work: st.encode(work["texts"], batch_size=size)

    if contender.startswith("ours"):
        from qwen3_retrieval import Qwen3Reranker

        reranker = Qwen3Reranker(model, **engine)
        if contender == "ours_plain":
            policy = replace(reranker.options.batch_policy, share_prefix=False)
            reranker = Qwen3Reranker(model, **engine, batch_policy=policy)
        return lambda work: reranker.score(work["query"], work["documents"])
    if contender == "st_cross_encoder":
        from sentence_transformers import CrossEncoder

        # Causal-LM checkpoint: the pair goes through its role-based chat template, scored yes-vs-no logits.
        cross_encoder = CrossEncoder(model, device=device, model_kwargs={"dtype": torch.float32})
        return lambda work: cross_encoder.predict([(work["query"], d) for d in work["documents"]])
    # The model card's transformers code (facts file, section 2.1).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device).eval()
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    instruction = "Given a web search query, retrieve relevant passages that answer the query"

    @torch.no_grad()
    def card(pairs: list[str]) -> list[float]:
        inputs = tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=8192 - len(prefix_ids) - len(suffix_ids),
        )
        inputs["input_ids"] = [prefix_ids + ids + suffix_ids for ids in inputs["input_ids"]]
        batch = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=8192).to(device)
        logits = lm(**batch).logits[:, -1, :]
        scores = torch.stack([logits[:, no], logits[:, yes]], dim=1).log_softmax(dim=1)
        return scores[:, 1].exp().tolist()

    def pairs(work: dict[str, Any]) -> list[str]:
        return [f"<Instruct>: {instruction}\n<Query>: {work['query']}\n<Document>: {d}" for d in work["documents"]]

    if contender == "model_card_batch":
        return lambda work: card(pairs(work))
    return lambda work: [card([p]) for p in pairs(work)]


def _concurrent_call(contender: str, task: str, model: str, engine: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    """Many small calls at once, as an agent server makes them: one thread per request, or one after another."""
    from concurrent.futures import ThreadPoolExecutor

    if task == "embedding":
        from qwen3_retrieval import Qwen3Embedder

        embedder = Qwen3Embedder(model, **engine)
        one: Callable[[Any], Any] = embedder.embed_query
        requests = "queries"
    else:
        from qwen3_retrieval import Qwen3Reranker

        reranker = Qwen3Reranker(model, **engine)
        one, requests = (lambda r: reranker.score(r["query"], r["documents"])), "requests"

    def run(work: dict[str, Any]) -> list[Any]:
        if contender == "ours_one_at_a_time":
            return [one(r) for r in work[requests]]
        with ThreadPoolExecutor(len(work[requests])) as pool:
            return list(pool.map(one, work[requests]))

    return run


def _vllm_server_call(task: str, model: str, url: str) -> Callable[[dict[str, Any]], Any]:
    """vLLM used directly: the model card's token ids posted to the server, 32 sequences per request."""
    import httpx
    from transformers import AutoTokenizer

    from qwen3_retrieval import DEFAULT_INSTRUCTION
    from qwen3_retrieval.prompts import RERANK_PREFIX, RERANK_SUFFIX

    tokenizer = AutoTokenizer.from_pretrained(model)
    client = httpx.Client(timeout=600)
    prefix = tokenizer.encode(RERANK_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False)

    def run(work: dict[str, Any]) -> list[Any]:
        if task == "embedding":
            ids = tokenizer(work["texts"])["input_ids"]  # the embedding tokenizer appends <|endoftext|>
            endpoint, field = f"{url}/embeddings", "embedding"
        else:
            bodies = [
                f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {work['query']}\n<Document>: {d}"
                for d in work["documents"]
            ]
            ids = [prefix + tokenizer.encode(b, add_special_tokens=False) + suffix for b in bodies]
            endpoint, field = f"{url.removesuffix('/v1')}/classify", "probs"
        rows: list[Any] = []
        for i in range(0, len(ids), 32):
            data = client.post(endpoint, json={"input": ids[i : i + 32]}).raise_for_status().json()["data"]
            rows += [row[field] for row in sorted(data, key=lambda row: row["index"])]
        return rows

    return run


# --- parent: inputs, contenders, report -----------------------------------------------------------------------


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
        print("vLLM rows skipped: pass --vllm-python (a venv with vllm-cpu, see the README)", flush=True)
    if args.only:
        jobs = [(t, n, w, [c for c in cs if c in args.only]) for t, n, w, cs in jobs]
        jobs = [job for job in jobs if job[3]]
    cpu = cpu_info() if args.device == "cpu" else {"native_bf16": True, "note": ""}
    dtypes = ["float32"]
    if cpu["native_bf16"]:
        dtypes.append("bfloat16")
    else:  # the bfloat16 GEMM probe and rows: oneDNN refuses them, or they would time an emulation
        print(cpu["note"], flush=True)
        jobs = [(t, n, w, [c for c in cs if c not in OWN_VARIANTS]) for t, n, w, cs in jobs]
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
                if contender in ("vllm_server", "ours_vllm_http") and server is None:
                    server = servers.enter_context(VLLMServerProcess(args.vllm_python, model, task, args.threads))
                save = Path(scratch) / f"{contender}.npy" if contender.startswith("ours") else None
                result = run_child(args, contender, task, inputs, model, save, server.url if server else None)
                if contender in ("vllm_server", "ours_vllm_http") and server is not None:
                    result["peak_rss_mb"] = server.peak_rss_mb()  # the server does the work and holds the model
                if save is not None and save.exists():
                    outputs[contender] = np.load(save)
                median = statistics.median(result["times"]) if result["times"] else None
                peak = peaks[OWN_VARIANTS.get(contender, "float32")]
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
        for row in rows:
            row["our_speedup"] = row["median_s"] / ours if row["median_s"] and ours else None
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


VLLM_KV_BYTES = 3 * 2**30  # room for 8192-token prompts of the 0.6B shape in float32 (229 kB of keys+values a token)


def vllm_speed_env(threads: int) -> dict[str, str]:
    """vLLM's CPU settings for speed (measured here): all cores bound, none reserved, no multiprocessing."""
    return {
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "OMP_NUM_THREADS": str(threads),
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


class VLLMServerProcess:
    """A vLLM server for one benchmark job, with the flags a user runs it with for speed (compiled, float32)."""

    def __init__(self, python: str, model: str, task: str, threads: int) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [
            python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
            "--port", str(self.port), "--runner", "pooling", "--dtype", "float32", "--max-model-len", "8192",
            "--kv-cache-memory-bytes", str(VLLM_KV_BYTES),
        ]  # fmt: skip
        if task == "reranking" and "ForSequenceClassification" not in (Path(model) / "config.json").read_text():
            from qwen3_retrieval.engines.vllm_local import ORIGINAL_RERANKER_OVERRIDES

            self.command += ["--hf-overrides", json.dumps(ORIGINAL_RERANKER_OVERRIDES)]
        self.env = {**os.environ, **vllm_speed_env(threads)}
        self.probe = f"{self.url}/embeddings" if task == "embedding" else f"http://127.0.0.1:{self.port}/classify"

    def __enter__(self) -> VLLMServerProcess:
        import httpx

        self.log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        start = time.monotonic()
        while time.monotonic() - start < 600:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; see {self.log.name}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.post(self.probe, json={"input": [[1, 2, 3]]}, timeout=60).status_code == 200:
                    self.startup_s = time.monotonic() - start
                    print(f"vLLM server ready in {self.startup_s:.0f} s", flush=True)
                    return self
            time.sleep(2)
        raise RuntimeError(f"vLLM did not start in 600 s; see {self.log.name}")

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory of the server and its child processes (vLLM runs its engine in a child)."""
        total, pids = 0, [self.process.pid]
        while pids:
            pid = pids.pop()
            with contextlib.suppress(OSError, StopIteration, ValueError):
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                total += int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids += [int(child) for child in (task / "children").read_text().split()]
        return total / 1024 or None

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


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


# The instruction sets that decide our kernels' speed, as /proc/cpuinfo names them.
INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx_ne_convert")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


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
            lines.append(
                f"| {block['name']} ({block['tokens']} tokens) | {row['label']} | {fmt(row['median_s'], '.2f')} | "
                f"{fmt(row['tokens_per_s'], '.0f')} | {fmt(row['our_speedup'], '.2f')}x | "
                f"{fmt(row['peak_rss_mb'], '.0f')} | {fmt(row['matmul_fraction'], '.0%')} |"
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


if __name__ == "__main__":
    main()
