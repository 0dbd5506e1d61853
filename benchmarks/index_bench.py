"""``qwen3-rag index`` at volume: indexing a folder of small files against embedding the passages it stored.

    python benchmarks/index_bench.py                          # 150 small Markdown files, real 0.6B shape, CPU
    python benchmarks/index_bench.py --shape tiny --files 20  # seconds: a smoke run

The ideal is one ``embed_documents`` call over exactly the passages the index stored; indexing adds reading,
splitting, Milvus Lite writes and its own batching. Rounds alternate (one call, index, one call, index...) on
the same loaded model, each index into a fresh collection; medians are reported, with their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from qwen3_retrieval import Qwen3Embedder
    from qwen3_retrieval.rag import pipeline
    from qwen3_retrieval.rag.store import PassageStore
    from qwen3_retrieval.testing import make_embedding_checkpoint

    torch.set_num_threads(args.threads)
    model = Path(args.cache) / args.shape / "embedding"
    if not (model / "config.json").exists():
        print(f"building a random {args.shape} embedding checkpoint in {model} ...", flush=True)
        make_embedding_checkpoint(model, shape=args.shape, dtype="bfloat16")
    config_class = getattr(pipeline, "RagConfig", None) or pipeline.Index  # the code before RagConfig, too
    # Held for the whole run: every embedder made by the index shares these loaded weights, so no round loads.
    embedder = Qwen3Embedder(model, device="cpu")
    embedder.embed_documents(["warm-up"])

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "notes"
        folder.mkdir()
        for i, text in enumerate(make_texts(args.files, 40, 120, seed=11)):
            (folder / f"note-{i:03d}.md").write_text(f"# Note {i}\n\n{text}\n")
        index_s, embed_s, stored = [], [], []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            embedder.embed_documents(stored) if stored else None
            if stored:
                embed_s.append(time.perf_counter() - started)
            where = config_class(uri=str(Path(scratch) / f"round{round_}.db"), embedding_model=str(model), device="cpu")
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
    print(
        f"\n{args.files} files, {len(stored)} passages ({tokens} tokens), {args.shape} shape, {args.threads} threads:\n"
        f"| index the folder | embed the stored passages in one call | ratio |\n|---|---|---|\n"
        f"| {index_median:.2f} s | {embed_median:.2f} s | {index_median / embed_median:.2f}x |"
    )


if __name__ == "__main__":
    main()
