"""``qwen3-rag``: index a folder into Milvus with Qwen3 embeddings; ask a question, get a cited answer.

Errors print one line (``qwen3-rag: error: …``) and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwen3_retrieval.errors import ServerError
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from qwen3_retrieval.rag.errors import RagError

NO_LLM_HINT = (
    "No answer generated: set OPENAI_API_KEY (and OPENAI_BASE_URL for vLLM, Ollama or another "
    "OpenAI-compatible server) to get answers, or pass --no-llm to silence this."
)


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="qwen3-rag",
        description="Index Markdown/text into Milvus with Qwen3-Embedding; answer questions with "
        "Qwen3-Reranker and an OpenAI-compatible chat model, citing sources.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--uri", default="./qwen3_rag.db", help="Milvus Lite path, or http(s)://host:19530")
        sub.add_argument("--token", default=None, help="Milvus/Zilliz token (default: $MILVUS_TOKEN)")
        sub.add_argument("--collection", default="qwen3_rag", help="collection name (default: qwen3_rag)")
        sub.add_argument("--embedding-model", default=DEFAULT_EMBEDDING_MODEL, help="hub id or local folder")
        sub.add_argument(
            "--embedding-url",
            default=None,
            help="a vLLM embedding server (http://host:8000/v1) instead of the model in this process; "
            "its key, if any, from $VLLM_API_KEY",
        )
        sub.add_argument("--dimensions", type=int, default=None, help="Matryoshka size (32..hidden size)")
        sub.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
        sub.add_argument("--milvus-timeout", type=float, default=10.0, help="seconds to wait for Milvus")

    index = commands.add_parser("index", help="index files and folders")
    index.add_argument("paths", nargs="+", metavar="PATH", help="Markdown/text files or folders")
    common(index)
    index.add_argument("--chunk-size", type=int, default=1500, help="max characters per passage")

    ask = commands.add_parser("ask", help="answer a question from the index")
    ask.add_argument("question", metavar="QUESTION")
    common(ask)
    ask.add_argument("--reranker-model", default=DEFAULT_RERANKER_MODEL, help="hub id or local folder")
    ask.add_argument("--reranker-url", default=None, help="a vLLM reranker server (http://host:8001/v1)")
    ask.add_argument("--candidates", type=int, default=10, help="passages retrieved before reranking")
    ask.add_argument("--top-n", type=int, default=3, help="passages kept after reranking")
    ask.add_argument("--llm-model", default="gpt-4o-mini", help="chat model name")
    ask.add_argument("--llm-timeout", type=float, default=60.0, help="seconds to wait for the chat model")
    ask.add_argument("--no-llm", action="store_true", help="only show the reranked passages")
    ask.add_argument("--json", action="store_true", help="print {answer, sources} as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = build_parser().parse_args(argv)
    # pymilvus logs every failed call with a traceback; the command reports errors in one line instead.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    try:
        if args.command == "index":
            return run_index(args)
        return run_ask(args)
    except (RagError, ValueError, TypeError) as err:
        print(f"qwen3-rag: error: {err}", file=sys.stderr)
        return 1
    except ServerError as err:  # a vLLM server that cannot be reached or fails
        print(f"qwen3-rag: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        from pymilvus.exceptions import MilvusException

        if not isinstance(err, MilvusException):
            raise
        print(f"qwen3-rag: error: Milvus at {args.uri} failed: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qwen3-rag: interrupted; run the same command again to finish", file=sys.stderr)
        return 130


def _store(args: argparse.Namespace) -> Any:
    from qwen3_retrieval.rag.store import PassageStore

    token = args.token or os.environ.get("MILVUS_TOKEN")
    return PassageStore(args.uri, args.collection, token=token, timeout=args.milvus_timeout)


def _embedder(args: argparse.Namespace, dimensions: int | None) -> Any:
    from qwen3_retrieval import Qwen3Embedder

    return Qwen3Embedder(
        args.embedding_model, dimensions=dimensions, **_engine_options(args.embedding_url, args.device)
    )


def _engine_options(url: str | None, device: str | None) -> dict[str, Any]:
    if url is None:
        return {"device": device}
    return {"base_url": url, "api_key": os.environ.get("VLLM_API_KEY") or None}


def run_index(args: argparse.Namespace) -> int:
    """``qwen3-rag index``: add new and changed files; unchanged ones are skipped."""
    from tqdm.auto import tqdm

    from qwen3_retrieval.rag.passages import file_fingerprint, find_files, split_passages

    files = find_files(args.paths)
    # Split every file before loading the model, so bad input (e.g. --chunk-size) fails fast.
    split = []
    for path in files:
        data = path.read_bytes()
        passages = split_passages(data.decode("utf-8", errors="replace"), str(path), args.chunk_size)
        split.append((str(path), passages, file_fingerprint(data, args.chunk_size)))
    embedder = _embedder(args, args.dimensions)
    store = _store(args)
    store.ensure(embedder.dimension)
    work = [
        (passages, fingerprint)
        for source, passages, fingerprint in split
        if passages and not store.is_current(source, fingerprint, len(passages))
    ]
    total = sum(len(p) for p, _ in work)
    with tqdm(total=total, desc="Embedding", unit="passage", disable=total == 0) as bar:
        for passages, fingerprint in work:
            vectors = embedder.embed_documents([p.text for p in passages])
            store.replace(passages, vectors, fingerprint)
            bar.update(len(passages))
    skipped = len(files) - len(work)
    print(
        f"Indexed {total} passages from {len(work)} files ({skipped} unchanged) into "
        f"{args.collection!r} at {args.uri}; the collection holds {store.count()} passages."
    )
    return 0


def run_ask(args: argparse.Namespace) -> int:
    """``qwen3-rag ask``: retrieve, rerank, and answer with citations."""
    from qwen3_retrieval import Qwen3Reranker
    from qwen3_retrieval.rag.answer import ask_chat_model

    if not args.question.strip():
        raise RagError("the question is empty")
    for name in ("candidates", "top_n"):
        if getattr(args, name) < 1:
            raise RagError(f"--{name.replace('_', '-')} must be at least 1")
    store = _store(args)
    if not store.exists():
        raise RagError(f"collection {args.collection!r} does not exist at {args.uri}; run `qwen3-rag index` first")
    dimension = store.dimension()
    if args.dimensions is not None and args.dimensions != dimension:
        raise RagError(f"collection {args.collection!r} holds {dimension}-dimensional vectors, not {args.dimensions}")
    # Embed at the size the collection was built with (a Matryoshka cut of the same model).
    embedder = _embedder(args, None)
    hidden = embedder.dimension
    if dimension > hidden:
        raise RagError(
            f"collection {args.collection!r} holds {dimension}-dimensional vectors but "
            f"{args.embedding_model} gives at most {hidden}; use the embedding model it was built with"
        )
    if dimension < hidden:
        embedder = _embedder(args, dimension)  # shares the model just loaded
    hits = store.search(embedder.embed_query(args.question), args.candidates)
    reranker = Qwen3Reranker(args.reranker_model, **_engine_options(args.reranker_url, args.device))
    ranked = reranker.rank(args.question, [h.text for h in hits], top_n=args.top_n)
    best = [hits[i] for i, _ in ranked]
    sources = [{"text": h.text, "source": h.source, "score": s} for h, (_, s) in zip(best, ranked)]

    answer: str | None = None
    error: RagError | None = None
    use_llm = not args.no_llm and bool(os.environ.get("OPENAI_API_KEY")) and bool(best)
    if use_llm:
        try:
            answer = ask_chat_model(args.question, best, model=args.llm_model, timeout=args.llm_timeout)
        except RagError as err:
            error = err  # the passages are still worth showing
    if args.json:
        print(json.dumps({"answer": answer, "sources": sources}, ensure_ascii=False, indent=2))
    else:
        _print_human(answer, sources, show_hint=not use_llm and not args.no_llm)
    if error is not None:
        raise error
    return 0


def _print_human(answer: str | None, sources: list[dict[str, Any]], *, show_hint: bool) -> None:
    if answer is not None:
        print(f"Answer:\n{answer.strip()}\n")
    if not sources:
        print("No passages found: the collection is empty.")
    else:
        print("Sources (reranked, best first):")
    for n, item in enumerate(sources, start=1):
        snippet = " ".join(item["text"].split())
        snippet = snippet if len(snippet) <= 240 else snippet[:237] + "..."
        print(f"[{n}] {item['score']:.3f}  {_display(item['source'])}\n    {snippet}")
    if show_hint:
        print(f"\n{NO_LLM_HINT}")


def _display(source: str) -> str:
    try:
        return str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        return source


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
