"""The GPU check: our packed GPU path against sentence-transformers and the model card's reranker code, in one command.

What it does, on one CUDA GPU, within 8 minutes (an H100 was the target; nothing here has run on a GPU yet):

1. Builds random-weight checkpoints of the real 0.6B shape (``qwen3_retrieval.testing``; speed does not depend
   on weight values), kept in ``--cache`` for the next run.
2. Dispatch: bfloat16 is the default dtype on this GPU, and packed attention takes the ``"varlen"`` kernel
   (torch's FlashAttention ``varlen_attn``, one call per layer) in bfloat16 and the per-length SDPA loop in
   float32; the varlen kernel equals per-sequence attention written out densely, shared prefixes included; a
   one-batch call synchronises with the host fewer times than the model has layers (none per layer).
3. Equality on the GPU: embeddings against sentence-transformers (cosine >= 0.999 in bfloat16, 1e-5 in
   float32); reranker scores against the model card's transformers code (``AutoModelForCausalLM``, P(yes) =
   softmax over the "no"/"yes" logits at the last position): 1e-5 in float32, and in bfloat16 no further from
   the card's float32 scores than 3x the card's own bfloat16 error (or 0.01).
4. Timing, bfloat16, contenders alternated, fresh words every round, medians: embedding against
   sentence-transformers at its best batch size (searched), reranking against the model card's code at its best
   batch size; tokens/s and the fraction of the GPU's dense bfloat16 peak used (FLOPs = the model's matrix
   multiplies, 2 x weights x tokens, plus causal attention), on short and on long documents.
   Targets printed: >= 1.5x sentence-transformers at embedding, >= 2x the model card's reranker code, >= 40%
   of the bfloat16 peak on long documents.

Results go to ``benchmarks/results/gpu/<gpu>/results.{json,md}``; the command exits 1 if an equality or dispatch
check fails (timing targets are reported, not enforced).

Run it on a GPU machine that has torch, transformers and sentence-transformers but no network (e.g. torch 2.11,
transformers 5.17, sentence-transformers 6.0.1): build our wheel here (``python -m build --wheel``), carry
it and this ``benchmarks/`` folder there, then::

    pip install --no-deps dist/qwen3_retrieval-*.whl   # our code only; torch & co. are already there
    pip install --no-deps tokenizers tqdm numpy         # only if missing (wheels carried the same way)
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py     # about 5-8 minutes on an H100

``--smoke`` runs on a CPU in seconds with tiny checkpoints: it times nothing, and checks the dispatch rule and
the equalities in float32 through both kernels (the varlen one through
``qwen3_retrieval.testing.reference_varlen_attention``, as FlashAttention has no CPU kernel), so its argument
building is checked end to end. The test suite runs it (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from qwen3_bench.workload import make_query, make_texts, workload  # noqa: E402
from qwen3_retrieval import DEFAULT_INSTRUCTION, Qwen3Embedder, Qwen3Reranker  # noqa: E402
from qwen3_retrieval.devices import resolve_dtype  # noqa: E402
from qwen3_retrieval.kernels import packed_attention  # noqa: E402
from qwen3_retrieval.kernels.packed_attention import Packing, Run, attend, choose_kernel, kernel_for  # noqa: E402
from qwen3_retrieval.testing import reference_packed_attention  # noqa: E402

# Dense (no sparsity) bfloat16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched against
# torch.cuda.get_device_name(), most specific first. --peak-tflops overrides.
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
]

TARGETS = {"embedding_vs_st": 1.5, "reranking_vs_model_card": 2.0, "long_documents_peak_fraction": 0.40}

CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class Check:
    """Collects pass/fail lines; the command exits 1 if any failed."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def __call__(self, name: str, ok: bool, detail: str) -> None:
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [r["check"] for r in self.results if not r["ok"]]


# --- references, written out independently of our code ----------------------------------------------------------


def st_model(path: Path, device: str, dtype: torch.dtype) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device=device, model_kwargs={"dtype": dtype}, local_files_only=True)
    model.max_seq_length = 8192
    return model


class ModelCardReranker:
    """The model card's transformers code: left padding, full logits, softmax over "no"/"yes" at the end."""

    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.prefix = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    @torch.no_grad()
    def scores(self, query: str, documents: list[str], batch_size: int | None = None) -> list[float]:
        pairs = [f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {d}" for d in documents]
        size = batch_size or len(pairs)
        out: list[float] = []
        for start in range(0, len(pairs), size):
            inputs = self.tokenizer(
                pairs[start : start + size],
                padding=False,
                truncation="longest_first",
                return_attention_mask=False,
                max_length=8192 - len(self.prefix) - len(self.suffix),
            )
            inputs["input_ids"] = [self.prefix + ids + self.suffix for ids in inputs["input_ids"]]
            batch = self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=8192).to(self.device)
            logits = self.model(**batch).logits[:, -1, :]
            stacked = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1).float()
            out += torch.nn.functional.log_softmax(stacked, dim=1)[:, 1].exp().tolist()
        return out


# --- checks --------------------------------------------------------------------------------------------------------


def check_dispatch(check: Check, device: torch.device, smoke: bool) -> None:
    has_varlen = packed_attention.varlen_call() is not None
    check(
        "dispatch rule",
        choose_kernel("cuda", torch.bfloat16, has_varlen=True, capability=(9, 0)) == "varlen"
        and choose_kernel("cuda", torch.float32, has_varlen=True, capability=(9, 0)) == "sdpa"
        and choose_kernel("cpu", torch.bfloat16, has_varlen=True) == "sdpa",
        "varlen on CUDA sm80+ in bf16/fp16 where torch has varlen_attn; SDPA loop for float32 and CPUs",
    )
    default = resolve_dtype(None, device)
    expected_default = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    check("default dtype", default == expected_default, f"{default} on {device.type}")
    bf16_kernel, fp32_kernel = kernel_for(device, torch.bfloat16), kernel_for(device, torch.float32)
    if smoke:
        check("this device's kernels", bf16_kernel == fp32_kernel == "sdpa", f"bf16 {bf16_kernel}, fp32 {fp32_kernel}")
        return
    capability = torch.cuda.get_device_capability(device)
    want = "varlen" if has_varlen and capability >= (8, 0) else "sdpa"
    check(
        "this GPU's kernels",
        bf16_kernel == want and fp32_kernel == "sdpa",
        f"bf16 {bf16_kernel}, fp32 {fp32_kernel} (torch {torch.__version__}, varlen_attn "
        f"{'present' if has_varlen else 'absent'}, sm{capability[0]}{capability[1]})",
    )


def check_kernel(check: Check, device: torch.device, dtype: torch.dtype) -> None:
    """Our packed attention (shared prefixes included), through the kernel this device takes for ``dtype``, against
    dense per-sequence attention, on random tensors."""
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 16, 8, 128
    layout = [(300, 2, 0), (120, 3, 0), (77, 1, 1), (33, 4, 2), (1, 2, 1)]  # (length, sequences, prefix)
    prefix_lengths = [40, 0, 129]
    runs, first = [], 0
    for length, count, prefix in layout:
        runs.append(Run(first, length, count, prefix))
        first += length * count

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    q, k, v = rand(first, heads, dim), rand(first, kv_heads, dim), rand(first, kv_heads, dim)
    prefixes = [[(rand(1, kv_heads, n, dim), rand(1, kv_heads, n, dim))] if n else None for n in prefix_lengths]
    kernel = packed_attention.kernel_for(device, dtype)
    offsets = packed_attention.varlen_offsets(runs, prefix_lengths, device) if kernel == "varlen" else None
    out = attend(0, q, k, v, Packing(runs, prefixes, offsets), dim**-0.5)
    expected = reference_packed_attention(q, k, v, runs, prefixes, 0, dim**-0.5)
    difference = (out.double() - expected).abs()
    worst, mean = float(difference.max()), float(difference.mean())
    # bfloat16 rounds the kernel's probabilities and its outputs (values up to ~4 here: a few 1e-2 at most); a
    # wrong mask, offset or prefix row is off by tenths.
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    name = f"{kernel} kernel ({str(dtype).removeprefix('torch.')})"
    detail = f"max |diff| to dense per-sequence attention {worst:.2e} <= {tolerance:g} (mean {mean:.1e})"
    check(name, worst <= tolerance, detail)


def check_host_syncs(check: Check, path: Path) -> None:
    """A one-batch bfloat16 call synchronises with the host a few times per forward pass, never once per layer."""
    import warnings

    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(path).num_hidden_layers
    # batch_wait_ms=None: the call runs in this thread, where the warnings are recorded.
    embedder = Qwen3Embedder(path, device="cuda", dtype="bfloat16", batch_wait_ms=None)
    texts = make_texts(8, 20, 60, seed=5)  # one batch, one forward pass
    embedder.embed_documents(texts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            embedder.embed_documents(texts)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    check("host synchronisations", syncs < layers, f"{syncs} in a one-batch call of a {layers}-layer model")


def check_embeddings(check: Check, path: Path, device: str, dtype: torch.dtype, label: str) -> None:
    texts = make_texts(24, 5, 300, seed=11)
    ours = torch.tensor(Qwen3Embedder(path, device=device, dtype=dtype).embed_documents(texts))
    st = st_model(path, device, dtype)
    reference = torch.from_numpy(st.encode(texts, batch_size=8, normalize_embeddings=True)).float()
    del st
    release(device)
    if dtype == torch.float32:
        worst = float((ours - reference).abs().max())
        check(f"embedding {label}", worst <= 1e-5, f"max |diff| to sentence-transformers {worst:.2e} <= 1e-5")
    else:
        cosine = float(torch.nn.functional.cosine_similarity(ours, reference).min())
        check(f"embedding {label}", cosine >= 0.999, f"min cosine to sentence-transformers {cosine:.5f} >= 0.999")


def check_reranker(check: Check, path: Path, device: str, dtype: torch.dtype, label: str) -> None:
    query, documents = make_query(3), make_texts(20, 5, 300, seed=12)
    ours = Qwen3Reranker(path, device=device, dtype=dtype).score(query, documents)
    card = ModelCardReranker(path, device, dtype)
    reference = card.scores(query, documents, batch_size=4)
    del card
    release(device)
    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    if dtype == torch.float32:
        check(f"reranker {label}", worst <= 1e-5, f"max |diff| to the model card's code {worst:.2e} <= 1e-5")
        return
    exact = ModelCardReranker(path, device, torch.float32)
    truth = exact.scores(query, documents, batch_size=4)
    del exact
    release(device)
    ours_error = max(abs(a - b) for a, b in zip(ours, truth, strict=True))
    card_error = max(abs(a - b) for a, b in zip(reference, truth, strict=True))
    # bfloat16 has no exact reference: ours must be about as close to the card's float32 scores as the card's own
    # code is in bfloat16 (within 3x, or 0.01 where both are tiny).
    check(
        f"reranker {label}",
        ours_error <= max(3 * card_error, 0.01),
        f"max |diff| to the card's float32 scores {ours_error:.2e}, the card's own bf16 error {card_error:.2e}",
    )


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --- timing --------------------------------------------------------------------------------------------------------


def timed(call: Callable[[], Any]) -> float:
    """Seconds ``call`` takes, the GPU's queued work included."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    synchronize()
    start = time.perf_counter()
    call()
    synchronize()
    return time.perf_counter() - start


def race(contenders: dict[str, Callable[[int], Any]], repeats: int) -> dict[str, list[float]]:
    """Each contender once untimed, then ``repeats`` rounds, the order rotated every round; round ``r``'s inputs
    are the same for every contender and new each round."""
    names = list(contenders)
    for name in names:
        contenders[name](0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(functools.partial(contenders[name], r + 1)))
    return times


def best_batch_size(call: Callable[[int, int], Any], sizes: list[int]) -> tuple[int, dict[int, float]]:
    """The batch size that ran one round fastest (each size warmed up first); out-of-memory sizes are skipped."""
    seen: dict[int, float] = {}
    for size in sizes:
        try:
            call(size, 0)
            seen[size] = timed(functools.partial(call, size, 100))
        except torch.OutOfMemoryError:
            release("cuda")  # too large a batch for this GPU: not a contender
    best = min(seen, key=lambda size: seen[size])
    return best, seen


class Plan(NamedTuple):
    """Where the timing runs and on what: the real plan on a GPU, or a tiny CPU rehearsal of the same code."""

    device: str
    repeats: int
    peak_tflops: float
    documents: tuple[int, int, int]
    """Embedding: (texts, fewest words, most words)."""
    long_documents: tuple[int, int, int]
    candidates: int
    st_sizes: list[int]
    long_st_sizes: list[int]
    card_sizes: list[int]


def gpu_plan(repeats: int, peak: float) -> Plan:
    return Plan(
        "cuda", repeats, peak, (256, 20, 300), (32, 2500, 3500), 100, [16, 32, 64, 128], [4, 8, 16], [8, 16, 32]
    )


def rehearsal_plan() -> Plan:
    return Plan("cpu", 1, 1.0, (8, 5, 30), (2, 100, 120), 6, [2, 4], [1, 2], [2, 4])


def time_embedding(
    path: Path, name: str, texts_words: tuple[int, int, int], sizes: list[int], plan: Plan
) -> dict[str, Any]:
    n, low, high = texts_words
    ours = Qwen3Embedder(path, device=plan.device, dtype="bfloat16")
    st = st_model(path, plan.device, torch.bfloat16)

    def texts(r: int) -> list[str]:
        return make_texts(n, low, high, seed=21, round_=r)

    size, searched = best_batch_size(lambda s, r: st.encode(texts(r), batch_size=s), sizes)
    times = race(
        {
            "ours": lambda r: ours.embed_documents(texts(r)),
            f"st_batch{size}": lambda r: st.encode(texts(r), batch_size=size),
        },
        plan.repeats,
    )
    tokens, flops, _ = workload(str(path), "embedding", {"texts": texts(0)})
    return summary(name, times, tokens, flops, plan.peak_tflops, {"st_batch_sizes_s": searched})


def time_reranking(path: Path, plan: Plan) -> dict[str, Any]:
    ours = Qwen3Reranker(path, device=plan.device, dtype="bfloat16")
    card = ModelCardReranker(path, plan.device, torch.bfloat16)

    def work(r: int) -> tuple[str, list[str]]:
        return make_query(r), make_texts(plan.candidates, 50, 400, seed=31, round_=r)

    size, searched = best_batch_size(lambda s, r: card.scores(*work(r), batch_size=s), plan.card_sizes)
    times = race(
        {"ours": lambda r: ours.score(*work(r)), f"model_card_batch{size}": lambda r: card.scores(*work(r), size)},
        plan.repeats,
    )
    query, documents = work(0)
    tokens, flops, _ = workload(str(path), "reranking", {"query": query, "documents": documents})
    extra = {"card_batch_sizes_s": searched}
    return summary(f"reranking {plan.candidates} candidates", times, tokens, flops, plan.peak_tflops, extra)


def run_timing(embedding: Path, reranker: Path, plan: Plan, deadline: float) -> list[dict[str, Any]]:
    """The three timed tasks, each on its own models (freed before the next); past ``deadline`` the rest are
    skipped, so the command ends in time whatever the GPU."""
    tasks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (
            "embedding documents",
            lambda: time_embedding(embedding, "embedding documents", plan.documents, plan.st_sizes, plan),
        ),
        (
            "embedding long documents",
            lambda: time_embedding(
                embedding, "embedding long documents", plan.long_documents, plan.long_st_sizes, plan
            ),
        ),
        ("reranking", lambda: time_reranking(reranker, plan)),
    ]
    results = []
    for name, task in tasks:
        if time.perf_counter() > deadline:
            print(f"  {name}: skipped, past the time budget", flush=True)
            results.append({"task": name, "skipped": "time budget"})
            continue
        results.append(task())
        release(plan.device)  # the task's models went with its frame
    return results


def summary(
    name: str, times: dict[str, list[float]], tokens: int, flops: float, peak: float, extra: dict[str, Any]
) -> dict[str, Any]:
    ours = statistics.median(times["ours"])
    rows = []
    for contender, seconds in times.items():
        median = statistics.median(seconds)
        rows.append(
            {
                "contender": contender,
                "median_s": median,
                "runs_s": seconds,
                "tokens_per_s": tokens / median,
                "peak_fraction": flops / median / (peak * 1e12),
                "our_speedup": median / ours,
            }
        )
    print(f"  {name}: {tokens} tokens, {flops / 1e12:.2f} TFLOP", flush=True)
    for row in rows:
        print(
            f"    {row['contender']:>22}: {row['median_s']:.3f} s  {row['tokens_per_s']:,.0f} tokens/s  "
            f"{row['peak_fraction']:.1%} of bf16 peak  ours {row['our_speedup']:.2f}x",
            flush=True,
        )
    return {"task": name, "tokens": tokens, "flops": flops, "rows": rows, **extra}


# --- the command ---------------------------------------------------------------------------------------------------


def checkpoints(cache: Path, smoke: bool) -> tuple[Path, Path]:
    from qwen3_retrieval.testing import make_embedding_checkpoint, make_reranker_checkpoint, tiny_checkpoint

    if smoke:
        return tiny_checkpoint("embedding"), tiny_checkpoint("reranker")
    embedding, reranker = cache / "embedding-0.6B", cache / "reranker-0.6B"
    if not (embedding / "model.safetensors").exists():
        print("building the 0.6B embedding checkpoint (random weights) ...", flush=True)
        make_embedding_checkpoint(embedding, shape="0.6B", dtype="bfloat16")
    if not (reranker / "model.safetensors").exists():
        print("building the 0.6B reranker checkpoint (random weights) ...", flush=True)
        make_reranker_checkpoint(reranker, shape="0.6B", dtype="bfloat16")
    return embedding, reranker


def peak_tflops(name: str, override: float | None) -> float:
    if override:
        return override
    for key, value in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (its dense bfloat16 peak in TFLOP/s)")


def use_varlen_stand_in() -> None:
    """Smoke form on a CPU: run packed attention through the varlen kernel's CPU stand-in."""
    from qwen3_retrieval.testing import reference_varlen_attention

    packed_attention.varlen_call = lambda: reference_varlen_attention  # type: ignore[assignment]
    packed_attention.kernel_for = lambda device, dtype: "varlen"  # type: ignore[assignment]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny checkpoints, no timing: dispatch and equality")
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="where the 0.6B checkpoints are kept")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/gpu/<gpu>)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bfloat16 peak, if not in the table")
    parser.add_argument("--budget-s", type=float, default=420, help="skip timing tasks that would start later")
    # The GPU form's whole code on a CPU with tiny checkpoints and inputs (its figures mean nothing): shakes out
    # mistakes before a GPU's minutes are spent on them.
    parser.add_argument("--rehearse-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = time.perf_counter()
    check = Check()
    report: dict[str, Any] = {"torch": torch.__version__, "smoke": args.smoke, "command": " ".join(sys.argv)}
    if args.smoke:
        device, gpu, peak = torch.device("cpu"), "cpu (smoke)", 0.0
    elif args.rehearse_on_cpu:
        device, gpu, peak = torch.device("cpu"), "cpu (rehearsal)", 1.0
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU here: run with --smoke on a CPU", file=sys.stderr)
            return 2
        device, gpu = torch.device("cuda"), torch.cuda.get_device_name()
        peak = peak_tflops(gpu, args.peak_tflops)
        report.update(gpu=gpu, bf16_peak_tflops=peak, capability=list(torch.cuda.get_device_capability()))
    report["gpu"] = gpu
    print(f"GPU check on {gpu}, torch {torch.__version__}", flush=True)
    embedding, reranker = checkpoints(Path(args.cache), args.smoke or args.rehearse_on_cpu)

    print("dispatch and kernel:", flush=True)
    check_dispatch(check, device, device.type == "cpu")
    where = device.type
    if args.smoke:
        check_kernel(check, device, torch.float32)  # the SDPA loop, then the varlen stand-in below
        print("equality, float32, SDPA loop:", flush=True)
        check_embeddings(check, embedding, where, torch.float32, "float32, SDPA loop")
        check_reranker(check, reranker, where, torch.float32, "float32, SDPA loop")
        use_varlen_stand_in()
        print("equality, float32, varlen kernel (CPU stand-in):", flush=True)
        check_kernel(check, device, torch.float32)
        check_embeddings(check, embedding, where, torch.float32, "float32, varlen stand-in")
        check_reranker(check, reranker, where, torch.float32, "float32, varlen stand-in")
    else:
        check_kernel(check, device, torch.bfloat16)
        check_kernel(check, device, torch.float32)
        if device.type == "cuda":
            check_host_syncs(check, embedding)
        print("equality on the GPU:", flush=True)
        for dtype, label in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
            check_embeddings(check, embedding, where, dtype, label)
            check_reranker(check, reranker, where, dtype, label)
        plan = rehearsal_plan() if args.rehearse_on_cpu else gpu_plan(args.repeats, peak)
        print(f"timing (bfloat16, {plan.repeats} alternated rounds, medians):", flush=True)
        report["results"] = run_timing(embedding, reranker, plan, started + args.budget_s)
        report["targets"] = targets(report["results"])
    report["checks"] = check.results
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out) if args.out else HERE / "results" / "gpu" / gpu.lower().replace(" ", "-")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    print(f"done in {report['seconds']:.0f} s; results in {out}", flush=True)
    if check.failed:
        print(f"FAILED: {', '.join(check.failed)}", file=sys.stderr)
        return 1
    return 0


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    short, long, rerank = (block.get("rows") for block in results)
    measured = {
        "embedding_vs_st": short[1]["our_speedup"] if short else None,
        "reranking_vs_model_card": rerank[1]["our_speedup"] if rerank else None,
        "long_documents_peak_fraction": long[0]["peak_fraction"] if long else None,
    }
    rows = [
        {"target": k, "want": TARGETS[k], "measured": v, "met": v is not None and v >= TARGETS[k]}
        for k, v in measured.items()
    ]
    print("targets:", flush=True)
    for row in rows:
        shown = "not measured" if row["measured"] is None else f"{row['measured']:.2f}"
        print(f"  {row['target']}: {shown} (want >= {row['want']}) {'met' if row['met'] else 'MISSED'}")
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check: {report['gpu']}", "", f"torch {report['torch']}; `{report['command']}`", ""]
    lines += ["| check | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {c['check']} | {'ok' if c['ok'] else 'FAIL'} | {c['detail']} |" for c in report["checks"]]
    for block in report.get("results", []):
        if "skipped" in block:
            lines += ["", f"## {block['task']}: skipped ({block['skipped']})"]
            continue
        lines += ["", f"## {block['task']} ({block['tokens']} tokens)", ""]
        lines += [
            "| contender | median s | tokens/s | bf16 peak used | ours vs it |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in block["rows"]:
            lines.append(
                f"| {row['contender']} | {row['median_s']:.3f} | {row['tokens_per_s']:,.0f} | "
                f"{row['peak_fraction']:.1%} | {row['our_speedup']:.2f}x |"
            )
    if report.get("targets"):
        lines += ["", "| target | want | measured | met |", "| --- | --- | --- | --- |"]
        for t in report["targets"]:
            shown = "not measured" if t["measured"] is None else f"{t['measured']:.2f}"
            lines.append(f"| {t['target']} | {t['want']} | {shown} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
