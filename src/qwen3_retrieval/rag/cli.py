"""``qwen3-rag``: index a folder into Milvus with Qwen3 embeddings; ask a question, get a cited answer.

The work is done by :mod:`qwen3_retrieval.rag.pipeline`; this module parses arguments, prints, and maps errors
to exit codes: a problem prints one line (``qwen3-rag: error: …``) and exits with 1; usage errors, including any
value the arguments alone show to be out of range, exit with 2 before anything is opened or loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from qwen3_retrieval import __version__
from qwen3_retrieval.errors import ServerError
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL, MIN_DIMENSIONS
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.terminal import path_name, printable
from qwen3_retrieval.rag.types import MODES, question_problem
from qwen3_retrieval.redaction import mask, redact_url, url_secrets

NO_LLM_HINT = (
    "No answer generated: set OPENAI_API_KEY (and OPENAI_BASE_URL for vLLM, Ollama or another "
    "OpenAI-compatible server) to get answers, or pass --no-llm to silence this."
)


ENVIRONMENT = """environment variables:
  OPENAI_API_KEY    the chat model's key (ask); without it, ask shows the passages only
  OPENAI_BASE_URL   an OpenAI-compatible server for the chat model (vLLM, Ollama, ...)
  VLLM_API_KEY      the key of the vLLM servers named by --embedding-url / --reranker-url
  MILVUS_TOKEN      the Milvus server's or Zilliz Cloud's token, when --token is not given
  QWEN3_RAG_API_KEY the key serve requires, when --api-key is not given
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option, and the environment list kept as written."""


class _Renamed(argparse.Action):
    """An option whose second spelling is its old name: still accepted, with a one-line warning on stderr."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        if option_string is not None and option_string != self.option_strings[0]:
            print(f"qwen3-rag: warning: {option_string} is now {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(what: str, zero: bool) -> Any:
    """A parser of a finite number of ``what``: positive, or also 0 with ``zero``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {what}, got {text!r}") from None
        if not (value >= 0 if zero else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero else 'a positive number of'} {what}, got {text}"
            )
        return value

    return parse


_gpus = _number("GPUs", zero=True)
_seconds = _number("seconds", zero=False)


def _question(text: str) -> str:
    if text == "-":
        text = sys.stdin.read()
    problem = question_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}; ask it in words (or - to read it from stdin)")
    return text


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    from qwen3_retrieval.rag.passages import MIN_CHUNK_TOKENS

    parser = argparse.ArgumentParser(
        prog="qwen3-rag",
        description="Index Markdown, text, PDF, HTML and DOCX files into Milvus with Qwen3-Embedding (dense + BM25); "
        "answer questions with Qwen3-Reranker and an OpenAI-compatible chat model, citing sources. With --pages, "
        "PDF pages and images too, with the Qwen3-VL models.",
        epilog=ENVIRONMENT,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qwen3-rag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--uri", default="./qwen3_rag.db", help="Milvus Lite path, or http(s)://host:19530")
        sub.add_argument("--token", default=None, help="Milvus/Zilliz token; None: $MILVUS_TOKEN")
        sub.add_argument("--collection", default="qwen3_rag", help="collection name")
        sub.add_argument("--embedding-model", default=DEFAULT_EMBEDDING_MODEL, help="hub id or local folder")
        sub.add_argument(
            "--embedding-url",
            default=None,
            help="a vLLM embedding server (http://host:8000/v1) instead of the model in this process; "
            "its key, if any, from $VLLM_API_KEY",
        )
        sub.add_argument(
            "--embedding-served-name",
            default=None,
            help="the name the embedding server serves the model under; None: asked from the server",
        )
        sub.add_argument(
            "--max-concurrency",
            "--server-requests",
            action=_Renamed,
            type=_at_least(1),
            default=4,
            help="requests in flight at once to a vLLM server",
        )
        sub.add_argument(
            "--max-batch",
            "--server-batch",
            action=_Renamed,
            type=_at_least(1),
            default=32,
            help="sequences per vLLM server request",
        )
        sub.add_argument(
            "--dimensions",
            type=_at_least(MIN_DIMENSIONS),
            default=None,
            help=f"Matryoshka size ({MIN_DIMENSIONS}..hidden size); None: the collection's, or the full size",
        )
        sub.add_argument("--device", default=None, help="cpu, cuda, mps; None: the best available")
        sub.add_argument("--milvus-timeout", type=_seconds, default=10.0, help="seconds to wait for Milvus")
        sub.add_argument(
            "--pages",
            action="store_true",
            help="also index PDF pages and .png/.jpg/.webp files as images, with Qwen3-VL-Embedding and "
            "Qwen3-VL-Reranker (the [pages] extra); scanned PDFs become searchable; ask cites page images",
        )

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, epilog=ENVIRONMENT, formatter_class=_HelpFormatter
        )

    index = command("index", "make the collection mirror files and folders")
    index.add_argument("paths", nargs="+", metavar="PATH", help="folders (mirrored) or files (added)")
    common(index)
    index.add_argument(
        "--chunk-tokens",
        type=_at_least(MIN_CHUNK_TOKENS),
        default=None,
        help="passage size in tokens; None: the collection's, or 512",
    )
    index.add_argument(
        "--overlap-tokens", type=_at_least(0), default=None, help="tokens neighbours share; None: chunk/8"
    )
    index.add_argument(
        "--include-hidden", action="store_true", help="also read hidden folders, virtualenvs and node_modules"
    )
    index.add_argument(
        "--follow-links", action="store_true", help="also follow symbolic links that lead out of the folders"
    )
    index.add_argument("--recreate", action="store_true", help="drop the collection first and rebuild it")
    index.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress in passages, with rate and ETA, on stderr: a bar on a terminal, otherwise a status line "
        "every few seconds (default: on when stderr is a terminal)",
    )
    index.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="read, split and embed on a Ray cluster (the [ray] extra): ADDRESS such as ray://head:10001 or "
        "auto; alone, $RAY_ADDRESS or a Ray started on this machine (put it after the paths)",
    )
    index.add_argument("--ray-embedders", type=_at_least(1), default=1, help="embedding actors on Ray, one model each")
    index.add_argument("--ray-gpus", type=_gpus, default=0.0, help="GPUs per embedding actor on Ray (0: CPU)")
    index.add_argument(
        "--ray-stall-timeout",
        type=_seconds,
        default=120.0,
        help="seconds on Ray with no file back (the actors' start included) before the run stops with an error; "
        "the same command again finishes it",
    )

    def answering(sub: argparse.ArgumentParser) -> None:
        """The reranker and chat-model options: ask's, and serve's and mcp's (which answer as ask does)."""
        sub.add_argument("--reranker-model", default=DEFAULT_RERANKER_MODEL, help="hub id or local folder")
        sub.add_argument("--reranker-url", default=None, help="a vLLM reranker server (http://host:8001/v1)")
        sub.add_argument(
            "--reranker-served-name",
            default=None,
            help="the name the reranker server serves the model under; None: asked from the server",
        )
        sub.add_argument("--llm-model", default="gpt-4o-mini", help="chat model name")
        sub.add_argument("--llm-timeout", type=_seconds, default=60.0, help="seconds to wait for the chat model")
        sub.add_argument("--no-llm", action="store_true", help="only show the reranked passages")

    ask = command("ask", "answer a question from the index")
    ask.add_argument("question", metavar="QUESTION", type=_question, help="the question; - reads it from stdin")
    common(ask)
    answering(ask)
    ask.add_argument("--mode", choices=MODES, default=MODES[0], help="retrieval before reranking")
    ask.add_argument("--candidates", type=_at_least(1), default=10, help="passages retrieved before reranking")
    ask.add_argument("--top-n", type=_at_least(1), default=3, help="passages kept after reranking")
    ask.add_argument(
        "--no-images",
        action="store_true",
        help="with --pages, send the chat model the pages' extracted text instead of their images (for a chat "
        "model that takes no images)",
    )
    ask.add_argument("--json", action="store_true", help="print {answer, sources} as one JSON object")

    from qwen3_retrieval.rag.serve import add_arguments

    serve = command("serve", "serve the index and its models over HTTP (the [serve] extra)")
    mcp = command("mcp", "serve the index as MCP tools (search, ask) on stdio (the [serve] extra)")
    for sub in (serve, mcp):
        common(sub)
        answering(sub)
    add_arguments(serve, _seconds, _at_least)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is as Ctrl-C is: a write in flight ends, and the run stops."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (130 after Ctrl-C, 143 after SIGTERM)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:  # Ctrl-C while the libraries import (the first seconds) is one line too
        return _run(argv)
    except KeyboardInterrupt as stop:
        print("qwen3-rag: interrupted; run the same command again to finish", file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ask" and args.top_n > args.candidates:
        parser.error(
            f"--top-n {args.top_n} is more than --candidates {args.candidates} (the reranker keeps at most the "
            f"passages it is given); raise --candidates to at least {args.top_n}"
        )
    _quiet_libraries()
    secrets = _secrets(args)
    try:
        with known_noise_off():
            if args.command == "serve":
                from qwen3_retrieval.rag.serve import options_from, run_serve

                return run_serve(_where(args), options_from(args), args.host, args.port)
            if args.command == "mcp":
                from qwen3_retrieval.rag.extras import require
                from qwen3_retrieval.rag.serve import options_from

                require("mcp.server.mcpserver", "serve", "qwen3-rag mcp")
                from qwen3_retrieval.rag.mcp_server import run_mcp

                return run_mcp(_where(args), options_from(args))
            return run_index(args) if args.command == "index" else run_ask(args)
    except (RagError, ValueError, TypeError, ServerError) as err:
        return _fail(mask(str(err), secrets))
    except Exception as err:
        if type(err).__module__.startswith("pymilvus"):  # no import: pymilvus may not be installed
            return _fail(mask(f"Milvus at {redact_url(args.uri)} failed: {getattr(err, 'message', err)}", secrets))
        raise


def _secrets(args: argparse.Namespace) -> list[str]:
    """Every secret this run may hold, masked in whatever it prints (the libraries mask theirs too)."""
    keys = [os.environ.get(name) for name in ("OPENAI_API_KEY", "VLLM_API_KEY", "MILVUS_TOKEN", "QWEN3_RAG_API_KEY")]
    keys.append(getattr(args, "api_key", None))  # serve's
    urls = [args.uri, getattr(args, "embedding_url", None), getattr(args, "reranker_url", None)]
    urls.append(os.environ.get("OPENAI_BASE_URL"))
    return [s for s in (*keys, args.token) if s] + [s for url in urls for s in url_secrets(url)]


def _quiet_libraries() -> None:
    """Keep third-party chatter off stderr: every problem reaches the user as the command's own one line."""
    # pymilvus logs every failed call with a traceback, pypdf every repaired file, huggingface_hub every retry of
    # an unreachable hub (22 lines before the one error that says what to do). gRPC's C core, read when pymilvus
    # or Ray first loads it, notes every fork (Ray starting its processes) unless told to keep to errors.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # huggingface_hub sets its logger's level from this when it is first imported, over any level set before.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    with contextlib.suppress(ImportError):
        import pymilvus  # noqa: F401  # importing it configures its loggers, with their own levels: after that
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] == "pymilvus"]
    for name in ("pymilvus", "milvus_lite", "pypdf", "huggingface_hub", *names):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # transformers' logger does not propagate; set its own level too


KNOWN_NOISE = (
    # Ray's C++ core, at "error", for every Ray Data actor pool: its actors' constructor arguments are in the
    # object store (Ray issue 53727: a restarted actor needs them; this process holds them for the whole run).
    b"has constructor arguments in the object store",
    # gRPC's C core, at "error": a server told an idle connection to ping less, which it then does (nothing fails).
    b"too_many_pings",
)
"""Lines that C code writes straight to stderr (no logger to quiet), on Ray and with Milvus Lite's in-process
server alike: none is the user's to fix, and any failure reaches the user as the command's own one line."""


@contextlib.contextmanager
def known_noise_off() -> Iterator[None]:
    """Drop :data:`KNOWN_NOISE` lines from what C code writes to stderr (file descriptor 2); pass the rest on.

    Python's own ``sys.stderr`` (warnings, progress, errors) goes to the terminal directly, a terminal still.
    """
    try:
        sys.stderr.flush()
        if sys.stderr.fileno() != 2:  # stderr was redirected in Python (a caller capturing it): leave it be
            raise ValueError("not the process's stderr")
        terminal = os.dup(2)
        read, write = os.pipe()
    except (OSError, ValueError):  # no stderr to filter (closed, or replaced by an object with no descriptor)
        yield
        return
    saved = sys.stderr
    sys.stderr = open(  # noqa: SIM115  # closed below; the descriptor stays open for the thread
        terminal, "w", buffering=1, encoding=saved.encoding, errors=saved.errors, closefd=False
    )

    def forward() -> None:
        with open(read, "rb") as lines:
            for line in lines:
                if not any(noise in line for noise in KNOWN_NOISE):
                    os.write(terminal, line)

    os.dup2(write, 2)
    os.close(write)
    thread = threading.Thread(target=forward, name="qwen3-rag-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = saved
        os.dup2(terminal, 2)  # the pipe ends when no process holds it (Ray's own may, until they stop)
        thread.join(timeout=2)
        if not thread.is_alive():
            os.close(terminal)


def _fail(message: str) -> int:
    print(f"qwen3-rag: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _where(args: argparse.Namespace) -> Any:
    from qwen3_retrieval.rag.passages import Splitting
    from qwen3_retrieval.rag.pipeline import RagConfig

    splitting = None
    if getattr(args, "chunk_tokens", None) is not None or getattr(args, "overlap_tokens", None) is not None:
        chunk = args.chunk_tokens if args.chunk_tokens is not None else Splitting().chunk_tokens
        overlap = args.overlap_tokens if args.overlap_tokens is not None else chunk // 8  # 64 for 512
        splitting = Splitting(chunk, overlap)
    return RagConfig(
        uri=args.uri,
        collection=args.collection,
        token=args.token or os.environ.get("MILVUS_TOKEN"),
        milvus_timeout=args.milvus_timeout,
        embedding_model=args.embedding_model,
        embedding_url=args.embedding_url,
        embedding_served_name=args.embedding_served_name,
        reranker_model=getattr(args, "reranker_model", DEFAULT_RERANKER_MODEL),
        reranker_url=getattr(args, "reranker_url", None),
        reranker_served_name=getattr(args, "reranker_served_name", None),
        max_concurrency=args.max_concurrency,
        max_batch=args.max_batch,
        dimensions=args.dimensions,
        device=args.device,
        splitting=splitting,
        pages=args.pages,
    )


def _ray_options(args: argparse.Namespace) -> Any:
    from qwen3_retrieval.rag.on_ray import RayOptions

    if args.ray is None:
        return None
    return RayOptions(args.ray or None, args.ray_embedders, args.ray_gpus, stall_timeout=args.ray_stall_timeout)


def run_index(args: argparse.Namespace) -> int:
    """``qwen3-rag index``: the collection mirrors the folders; unchanged files are skipped."""
    from qwen3_retrieval.rag.pipeline import RagPipeline

    with RagPipeline(_where(args)) as pipeline:  # closed at the end: the Milvus Lite file is unlocked
        report = pipeline.index(
            args.paths,
            include_hidden=args.include_hidden,
            follow_links=args.follow_links,
            recreate=args.recreate,
            warn=lambda message: print(f"qwen3-rag: warning: {message}", file=sys.stderr),
            progress=sys.stderr.isatty() if args.progress is None else args.progress,
            ray=_ray_options(args),
        )
    reused = f", {report.passages_reused} passages reused" if report.passages_reused else ""
    print(
        f"Indexed {report.passages_added} passages from {report.files_indexed} files "
        f"({report.files_unchanged} unchanged, {report.files_removed} removed{reused}) into "
        f"{args.collection!r} at {redact_url(args.uri)}; the collection holds {report.passages_total} passages."
    )
    if report.files_without_text:
        shown = ", ".join(map(path_name, report.files_without_text[:10]))
        more = f" and {len(report.files_without_text) - 10} more" if len(report.files_without_text) > 10 else ""
        print(f"{len(report.files_without_text)} files gave no passages (no text in them): {shown}{more}.")
    return 0


def run_ask(args: argparse.Namespace) -> int:
    """``qwen3-rag ask``: retrieve, rerank, and stream an answer that cites the sources."""
    from qwen3_retrieval.rag.pipeline import RagPipeline

    pipeline = RagPipeline(_where(args))
    with pipeline:  # the answer needs no index: the Milvus Lite file is unlocked before it streams
        sources = pipeline.retrieve(args.question, candidates=args.candidates, top_n=args.top_n, mode=args.mode)
    use_llm = not args.no_llm and bool(os.environ.get("OPENAI_API_KEY")) and bool(sources)
    pieces: list[str] = []
    error: RagError | None = None
    if use_llm:
        try:
            images = args.pages and not args.no_images
            chat = pipeline.stream_answer(
                args.question, sources, model=args.llm_model, timeout=args.llm_timeout, images=images
            )
            for piece in chat:
                if not args.json:
                    # The header waits for the first words: a chat model that cannot be reached leaves none behind.
                    shown = printable(piece, lines=True)  # the model may repeat a document's escape sequences
                    print(shown if pieces else f"Answer:\n{shown}", end="", flush=True)
                pieces.append(piece)
        except RagError as err:
            error = err  # what was printed stays; the passages are still worth showing
        if not args.json and pieces:
            print("\n", flush=True)
        elif not args.json and error is None:
            print("Answer: (the chat model returned no text)\n", flush=True)
    answer = "".join(pieces) if use_llm and (pieces or error is None) else None
    if args.json:
        payload: dict[str, Any] = {"answer": answer, "sources": [s.as_dict() for s in sources]}
        if error is not None:
            payload["error"] = str(error)
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        _print_sources(sources, show_hint=not use_llm and not args.no_llm)
    return _fail(str(error)) if error is not None else 0


def _print_sources(sources: Sequence[Any], *, show_hint: bool) -> None:
    if not sources:
        print("No passages found: the collection is empty.")
    else:
        print("Sources (reranked, best first):")
    for n, item in enumerate(sources, start=1):
        snippet = printable(" ".join(item.text.split()))  # a file's text and name reach the terminal as text
        snippet = snippet if len(snippet) <= 240 else snippet[:237] + "..."
        where = ", ".join(path_name(part) for part in (item.path, item.location) if part)
        where += " (image)" if item.image else ""
        print(f"[{n}] {item.score:.3f}  {where}\n    {snippet}")
    if show_hint:
        print(f"\n{NO_LLM_HINT}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
