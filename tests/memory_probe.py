"""Extra peak memory of one call, measured in a fresh process: ``python memory_probe.py JOB CHECKPOINT ...``.

Jobs:
    rerank CHECKPOINT QUERY_WORDS CANDIDATES [MAX_LENGTH]   one query against N short candidates
    rerank-long CHECKPOINT DOC_WORDS                        one long document against a short query
    embed-long CHECKPOINT DOC_WORDS                         the same long document embedded
    huge EMBEDDING MEGABYTES RERANKER                        one string of that size embedded, then reranked
    lengths CHECKPOINT WORDS CALLS                          CALLS texts embedded one at a time, each of another
                                                            length up to WORDS words
    images VL_CHECKPOINT SIDE COUNT                         COUNT image files of SIDE x SIDE pixels embedded in
                                                            one call (Qwen3-VL), batch budget 600 tokens

Prints the growth of the peak resident set (MB) caused by the measured call alone: the model is loaded and run
once on a tiny input first, so loading and first-call allocations are not counted.
"""

from __future__ import annotations

import sys
from typing import Any


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_mb() -> float:
    """The peak resident set since the last call of :func:`start_measuring`."""
    return _status_mb("VmHWM")


def start_measuring() -> float:
    """Reset the peak to the current resident set, and return that.

    Not ``getrusage``'s ``ru_maxrss``: after fork and exec it starts at the parent's resident set, so a probe
    started by a large test process would report a peak that its own call never reached (and 0 extra).
    """
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # Linux: reset VmHWM to VmRSS
    return _status_mb("VmRSS")


def settle(model: Any) -> None:
    """Wait for the model's compile, where ``compile="auto"`` (the default) compiles here: the probes measure the
    path a user runs, and a compile that failed would measure the eager one instead without a word."""
    import torch

    from qwen3_retrieval.kernels import compiled

    expected = compiled.resolve("auto", torch.float32, torch.device("cpu"))
    if model.wait_compiled() != expected:
        raise SystemExit(f"the model's compiled path: {not expected}, expected {expected}")


def main() -> None:
    import torch

    from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker

    torch.set_num_threads(2)
    job, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if job == "rerank":
        count, max_length = int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 8192
        reranker = Qwen3Reranker(path, device="cpu", max_length=max_length)
        query = " ".join(["history"] * size)
        docs = [f"candidate {i} is about music and art" for i in range(count)]
        reranker.score("warm up", ["tiny"])
        settle(reranker)  # measure the compiled path (the default) as it runs once compiled
        before = start_measuring()
        reranker.score(query, docs)
    elif job in ("rerank-long", "embed-long"):
        text = " ".join(f"word{i % 97}" for i in range(size))
        if job == "rerank-long":
            model = Qwen3Reranker(path, device="cpu", max_length=32768)
            model.score("warm up", ["tiny"])
            settle(model)
            before = start_measuring()
            model.score("what is this about?", [text])
        else:
            embedder = Qwen3Embedder(path, device="cpu", max_length=32768)
            embedder.embed_documents(["tiny"])
            settle(embedder)
            before = start_measuring()
            embedder.embed_documents([text])
    elif job == "huge":
        text = "lorem ipsum dolor sit amet, " * (size * 2**20 // 28)  # built without a peak of its own
        embedder = Qwen3Embedder(path, device="cpu")
        reranker = Qwen3Reranker(sys.argv[4], device="cpu")
        embedder.embed_documents(["tiny"])
        reranker.score("warm up", ["tiny"])
        settle(embedder)
        settle(reranker)
        before = start_measuring()
        embedder.embed_documents([text])
        reranker.score("what is this about?", [text])
    elif job == "lengths":
        embedder = Qwen3Embedder(path, device="cpu")
        embedder.embed_documents(["tiny"])
        settle(embedder)
        calls = int(sys.argv[4])
        before = start_measuring()
        for i in range(calls):  # every call a token count of its own, the longest first
            embedder.embed_documents([" ".join(f"word{j % 89}" for j in range(size - i * (size // 2) // calls))])
    elif job == "images":
        import tempfile

        import numpy as np
        from PIL import Image

        from qwen3_retrieval import Qwen3VLEmbedder

        folder = tempfile.mkdtemp(prefix="probe-images-")
        rng = np.random.default_rng(0)
        paths = []
        for i in range(int(sys.argv[4])):
            paths.append(f"{folder}/{i}.png")
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
        vl = Qwen3VLEmbedder(path, device="cpu", batch_tokens=600)
        vl.embed_images([paths[0]])
        before = start_measuring()
        vl.embed_images(paths)
    else:
        raise SystemExit(f"unknown job {job!r}")
    print(f"{peak_mb() - before:.1f}")


if __name__ == "__main__":
    main()
