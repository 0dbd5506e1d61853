"""``qwen3-rag serve``: one index and its two models over HTTP, for agents in other processes and languages.

The routes follow the schemas clients already speak, so no client of ours is needed:

* ``POST /v1/search`` and ``POST /v1/ask`` (server-sent events) are the pipeline's :meth:`~RagPipeline.aretrieve`
  and :meth:`~RagPipeline.stream_answer`;
* ``POST /v1/embeddings`` is OpenAI's, with an ``input_type`` extension (``"query"`` adds the instruction; the
  default, ``"document"``, is what OpenAI's API means by an input); token ids as ``input`` are run as given, as
  vLLM runs them, so the package's own HTTP engine (``Qwen3Embedder(base_url=...)``) gets the exact pooled states;
* ``POST /classify`` is vLLM's, token ids in and P(yes) out, for ``Qwen3Reranker(base_url=...)``;
* ``POST /v1/rerank`` is the schema vLLM, Jina and Cohere share;
* ``GET /v1/models`` (which the HTTP engine reads to find the served name) and ``GET /health``.

Every model call is awaited on the shared embedder and reranker objects: the core's micro-batcher merges the
calls of concurrent requests into shared runs, and their answers equal the same calls made one at a time.

Production rules: an optional API key (``--api-key`` or ``QWEN3_RAG_API_KEY``) is compared in constant time and
never logged; a request body over ``--max-request-bytes`` is refused with 413, more inputs than ``--max-inputs``
with 422, both saying what to change; every request has a deadline (``--request-timeout``, 504 when passed); the
index is read-only unless ``--allow-index``, and then ``POST /v1/index`` takes only paths under the folders the
collection already mirrors or ``--index-root`` names. SIGTERM stops taking connections and finishes the requests in
flight before the process exits.
"""

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hmac
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from qwen3_retrieval.errors import QueryTooLongError, ServerError
from qwen3_retrieval.prompts import MIN_DIMENSIONS
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.extras import require
from qwen3_retrieval.redaction import check_secret

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name request models made
# inside create_app, as objects.
if TYPE_CHECKING:  # the command's parser imports this module: the pipeline's libraries load when it runs
    from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

API_KEY_ENV = "QWEN3_RAG_API_KEY"
T = TypeVar("T")


@dataclass(frozen=True)
class ServeOptions:
    """How the server answers: its limits, its key, and what ``/v1/ask`` asks the chat model."""

    api_key: str | None = field(default=None, repr=False)
    """Bearer token every route but ``/health`` requires; None: no key."""
    allow_index: bool = False
    """Accept ``POST /v1/index`` (else the index is read-only)."""
    index_roots: tuple[str, ...] = ()
    """Folders ``POST /v1/index`` may read besides the ones the collection already mirrors."""
    max_request_bytes: int = 1 << 20
    max_inputs: int = 256
    """Inputs per ``/v1/embeddings`` or ``/classify`` request, documents per ``/v1/rerank``, candidates per search."""
    request_timeout: float = 60.0
    """Seconds a request may take (an answer's stream is bounded by ``llm_timeout`` instead, once it starts)."""
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = 60.0
    no_llm: bool = False


class ApiError(Exception):
    """An answer other than 200, with the message that says what to fix."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# --- the models, loaded before the first request ---------------------------------------------------------------


class Served:
    """The pipeline and the two models every request shares (one object each, so concurrent calls merge)."""

    def __init__(self, pipeline: "RagPipeline", options: ServeOptions) -> None:
        self.pipeline, self.options = pipeline, options
        config = pipeline.config
        if config.pages:
            raise RagError("qwen3-rag serve runs the text models; --pages is not served yet (use ask)")
        with pipeline._opened() as (_, settings):  # refused here, at start, if there is no index or it is damaged
            self.dimensions: int | None = settings["dimensions"]
        self.embedder = pipeline.embedder(None)  # the full-size vectors of /v1/embeddings; same weights
        self.embedding_parts = self.embedder.ready()
        pipeline.embedder(self.dimensions).ready()
        self.reranker = pipeline.reranker()
        self.reranking_parts = self.reranker.ready()
        self.hidden_size = self.embedding_parts[0].dimension
        self.embedding_name = config.embedding_model
        self.reranker_name = config.reranker_model
        self.embedding_vocab = _vocabulary(self.embedding_parts[1])
        self.reranker_vocab = _vocabulary(self.reranking_parts[1])
        self.index_lock = asyncio.Lock()
        # A model may be named as given at start or as its folder's absolute path (what the index records).
        names = (self.embedding_name, self.reranker_name)
        self._aliases = {name: {name, str(Path(name).expanduser().resolve())} for name in names}

    def models(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` rows: each model's name as given, with ``root`` (what the HTTP engine matches)."""
        made = int(time.time())
        rows = [
            (self.embedding_name, self.embedder.options.max_length),
            (self.reranker_name, self.reranker.options.max_length),
        ]
        return [
            {
                "id": name,
                "object": "model",
                "created": made,
                "owned_by": "qwen3-retrieval",
                "root": name,
                "parent": None,
                "max_model_len": length,
            }
            for name, length in rows
        ]

    def check_model(self, given: str | None, expected: str) -> str:
        """The model a request names must be the one its route runs (vLLM's 404 text, which our engine reads)."""
        if given is None or given in self._aliases[expected]:
            return expected
        other = self.reranker_name if expected == self.embedding_name else self.embedding_name
        hint = f" ({given!r} is served on the other routes)" if given == other else ""
        raise ApiError(
            404,
            f"The model `{given}` does not exist on this route{hint}; send model {expected!r} or leave it out",
            "NotFoundError",
        )


def _vocabulary(engine: Any) -> int | None:
    """How many token ids the engine's model embeds (an id past it would fail every merged caller's run)."""
    backbone = getattr(engine, "backbone", None)
    embeddings = backbone.get_input_embeddings() if backbone is not None else None
    return int(embeddings.num_embeddings) if embeddings is not None else None


# --- the app --------------------------------------------------------------------------------------------------


def create_app(served: Served, *, on_ready: Callable[[], None] | None = None) -> Any:
    """The ASGI app over ``served``: its routes, the key check, the size limit and the error bodies."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    from qwen3_retrieval.rag.serve_models import Classify, Embeddings, Index, Rerank, Search

    options = served.options

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    app = FastAPI(title="qwen3-rag", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit, limit=options.max_request_bytes)
    key = options.api_key.encode() if options.api_key else None

    async def authorized(request: Request) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Compared in constant time, as bytes; the key and what was sent never reach a log or an answer.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise ApiError(
                401,
                f"missing or wrong API key: send the key the server was started with as 'Authorization: "
                f"Bearer KEY' (--api-key or ${API_KEY_ENV})",
                "AuthenticationError",
            )

    guarded = [Depends(authorized)]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message, err.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        if "json" not in request.headers.get("content-type", ""):
            return _error(422, "the body must be a JSON object sent with 'Content-Type: application/json'")
        return _error(422, _validation_message(err.errors()))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": served.models()}

    @app.post("/v1/search", dependencies=guarded)
    async def search(body: Search) -> dict[str, Any]:
        sources = await _answering(options, lambda: _retrieve(served, body))
        return {"sources": [s.as_dict() for s in sources]}

    @app.post("/v1/ask", dependencies=guarded)
    async def ask(body: Search) -> StreamingResponse:
        # Retrieval runs before the stream starts, so its errors are an HTTP status, not an event.
        sources = await _answering(options, lambda: _retrieve(served, body))
        return StreamingResponse(_ask_events(served, body.question, sources), media_type="text/event-stream")

    @app.post("/v1/embeddings", dependencies=guarded)
    async def embeddings(body: Embeddings) -> dict[str, Any]:
        return await _answering(options, lambda: _embeddings(served, body))

    @app.post("/classify", dependencies=guarded)
    async def classify(body: Classify) -> dict[str, Any]:
        return await _answering(options, lambda: _classify(served, body))

    async def rerank(body: Rerank) -> dict[str, Any]:
        return await _answering(options, lambda: _rerank(served, body))

    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):  # vLLM serves all three; Cohere's clients use v1 or v2
        app.add_api_route(path, rerank, methods=["POST"], dependencies=guarded)

    @app.post("/v1/index", dependencies=guarded)
    async def index(body: Index) -> dict[str, Any]:
        if not options.allow_index:
            raise ApiError(
                403, "the index is read-only: start the server with --allow-index to index over HTTP", "PermissionError"
            )
        paths = await asyncio.to_thread(_indexable, served, body.paths)
        async with served.index_lock:  # one run at a time; questions go on meanwhile (see RagPipeline.index)
            report = await asyncio.to_thread(_catching, lambda: served.pipeline.index(paths))
        return dataclasses.asdict(report)

    return app


class _BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413, declared or streamed, before any of it is parsed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        chunks, size, more = [], 0, True
        while more:  # read it all here (at most the limit): a body streamed without a length is counted too
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(send, size)
                return
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, send: Any, size: int) -> None:
        response = _error(
            413,
            f"the request body is {size} bytes, over the server's limit of {self.limit}: send fewer or shorter "
            "inputs per request, or start the server with a larger --max-request-bytes",
        )
        await response({"type": "http"}, _replay([]), send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if then is not None:
            return dict(await then())  # the client's disconnect, as the app would have seen it
        return {"type": "http.disconnect"}

    return receive


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    """The error body OpenAI's and vLLM's clients read: ``{"error": {"message", "type", "code"}}``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _validation_message(errors: Sequence[Any]) -> str:
    """One line naming each bad field and what it must be."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "the body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


async def _answering(options: ServeOptions, work: Callable[[], Awaitable[T]]) -> T:
    """Run one request's work under its deadline, with the library's errors as the statuses they mean."""
    try:
        return await asyncio.wait_for(work(), options.request_timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            504,
            f"the request did not finish within {options.request_timeout:g} s: send less per request, or start "
            "the server with a larger --request-timeout",
            "TimeoutError",
        ) from None
    except ServerError as err:
        raise ApiError(502, str(err), "ServerError") from None
    except RagError as err:
        raise _rag_error(err) from None
    except (ValueError, TypeError) as err:
        raise ApiError(422, str(err)) from None


def _rag_error(err: RagError) -> ApiError:
    message = str(err)
    if message.startswith(("there is no index", "the index at", "collection ")):  # the server's state, not the input
        return ApiError(503, message, "ServiceUnavailableError")
    for flag, name in (("--top-n", "top_n"), ("--candidates", "candidates"), ("--mode", "mode")):
        message = message.replace(flag, name)  # the pipeline speaks of the command's options; here they are fields
    return ApiError(422, message)


def _catching(work: Callable[[], T]) -> T:
    try:
        return work()
    except RagError as err:
        raise _rag_error(err) from None
    except (ValueError, TypeError) as err:
        raise ApiError(422, str(err)) from None


# --- the routes' work -----------------------------------------------------------------------------------------


async def _retrieve(served: Served, body: Any) -> list[Any]:
    _check_count(served.options, body.candidates, "candidates", "--candidates of a search")
    return await served.pipeline.aretrieve(body.question, candidates=body.candidates, top_n=body.top_n, mode=body.mode)


async def _ask_events(served: Served, question: str, sources: list[Any]) -> AsyncIterator[str]:
    """``answer`` events as the chat model streams, then ``sources`` (with the whole answer), then ``done``."""
    from starlette.concurrency import iterate_in_threadpool

    options = served.options
    pieces: list[str] = []
    answered = not options.no_llm and bool(os.environ.get("OPENAI_API_KEY")) and bool(sources)
    if answered:
        chat = served.pipeline.stream_answer(
            question, sources, model=options.llm_model, timeout=options.llm_timeout, images=False
        )
        try:
            async for piece in iterate_in_threadpool(chat):
                pieces.append(piece)
                yield _event("answer", {"text": piece})
        except RagError as err:  # the passages are still worth sending
            yield _event("error", {"message": str(err)})
    final = {"answer": "".join(pieces) if answered else None, "sources": [s.as_dict() for s in sources]}
    yield _event("sources", final)
    yield _event("done", {})


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _check_count(options: ServeOptions, count: int, what: str, fix: str) -> None:
    if count > options.max_inputs:
        raise ApiError(
            422,
            f"{count} {what} in one request, over the server's limit of {options.max_inputs}: split it into "
            f"requests of at most {options.max_inputs} (the limit is the server's --max-inputs; it bounds {fix})",
        )


def _token_ids(given: Any, vocabulary: int | None, max_length: int, options: ServeOptions) -> list[list[int]] | None:
    """Token-id input as a list of sequences, each checked; None if the input is text."""
    if isinstance(given, str) or not given:
        return None
    if all(isinstance(x, int) for x in given):
        given = [given]
    elif not all(isinstance(x, list) for x in given):
        return None
    _check_count(options, len(given), "inputs", "the inputs of one request")
    for n, ids in enumerate(given):
        if not ids:
            raise ApiError(422, f"input {n} is an empty list of token ids; send at least one id")
        if len(ids) > max_length:
            raise ApiError(
                422,
                f"This model's maximum context length is {max_length} tokens; input {n} has {len(ids)}: shorten it",
            )
        bad = next((i for i in ids if not 0 <= i < (vocabulary or 1 << 31)), None)
        if bad is not None:
            raise ApiError(
                422,
                f"input {n} holds token id {bad}, outside the model's vocabulary (0 to {(vocabulary or 1 << 31) - 1})",
            )
    return [list(ids) for ids in given]


async def _embeddings(served: Served, body: Any) -> dict[str, Any]:
    name = served.check_model(body.model, served.embedding_name)
    if body.dimensions is not None and not MIN_DIMENSIONS <= body.dimensions <= served.hidden_size:
        raise ApiError(422, f"dimensions must be from {MIN_DIMENSIONS} to {served.hidden_size}, got {body.dimensions}")
    embedder = served.pipeline.embedder(body.dimensions)
    processor, engine = await embedder.aready()
    policy = embedder.options.policy
    given = _token_ids(body.input, served.embedding_vocab, embedder.options.max_length, served.options)
    ids: list[list[int]]
    if given is not None:  # run as given, as vLLM does: the ids carry their own prompt and end-of-text token
        if body.input_type == "query" or body.instruction is not None:
            raise ApiError(422, "token ids carry their own prompt: leave out input_type and instruction, or send text")
        ids = given
        pooled = await engine.aembed(ids, policy)
        if body.use_activation is False:  # the raw state, as vLLM's use_activation=false (what our engine asks)
            rows = pooled.float().numpy()[:, : body.dimensions or None]
        else:
            rows = processor.vectors(pooled)
    else:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(422, "input must be a string, a list of strings or token ids; it is empty or mixed")
        _check_count(served.options, len(texts), "inputs", "the inputs of one request")
        if body.input_type == "query":
            make = lambda: processor.queries(texts, body.instruction)  # noqa: E731
        elif body.instruction is not None:
            raise ApiError(422, "an instruction applies to queries only: add input_type 'query' or leave it out")
        else:
            make = lambda: processor.documents(texts)  # noqa: E731
        ids = await asyncio.to_thread(make)
        rows = processor.vectors(await engine.aembed(ids, policy))  # what embed_queries / embed_documents return
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(row, body.encoding_format)}
        for i, row in enumerate(rows)
    ]
    tokens = sum(len(row) for row in ids)
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoded(row: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":  # OpenAI's form (its Python client's default): little-endian float32 bytes
        return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
    return np.asarray(row, dtype=np.float32).tolist()


async def _classify(served: Served, body: Any) -> dict[str, Any]:
    name = served.check_model(body.model, served.reranker_name)
    _, engine = await served.reranker.aready()
    ids = _token_ids(body.input, served.reranker_vocab, served.reranker.options.max_length, served.options)
    if ids is None:
        raise ApiError(422, "/classify takes the reranker's prompt token ids; to score texts use /v1/rerank")
    from qwen3_retrieval.engines import RerankPrompts

    scores = await engine.ascore(RerankPrompts([], ids), served.reranker.options.policy)
    data = [{"index": i, "label": "yes", "probs": [p], "num_classes": 1} for i, p in enumerate(scores)]
    tokens = sum(map(len, ids))
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _rerank(served: Served, body: Any) -> dict[str, Any]:
    name = served.check_model(body.model, served.reranker_name)
    _check_count(served.options, len(body.documents), "documents", "the documents of one rerank request")
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    try:
        ranked = await served.reranker.arank(body.query, texts, top_n=body.top_n, instruction=body.instruction)
    except QueryTooLongError as err:
        raise ApiError(422, f"{err}; shorten the query") from None
    results = []
    for index, score in ranked:
        row: dict[str, Any] = {"index": index, "relevance_score": score}
        if body.return_documents:
            row["document"] = {"text": texts[index]}
        results.append(row)
    tokens = sum(len(t) for t in texts) // 4  # an estimate: the documents are tokenized in the reranker's prompt
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": name, "results": results, "usage": {"total_tokens": tokens}}


def _indexable(served: Served, given: Sequence[str]) -> list[Path]:
    """Each path resolved (links followed), kept only if inside a served root; refused with 403 otherwise."""
    with served.pipeline._opened() as (store, _):
        roots = [Path(p).resolve() for p in store.roots().values()]
    roots += [Path(r).expanduser().resolve() for r in served.options.index_roots]
    paths = []
    for text in given:
        if not isinstance(text, str) or not text or "\x00" in text:
            raise ApiError(422, f"not a path: {text!r}")
        path = Path(text).expanduser().resolve()
        if not any(path == root or path.is_relative_to(root) for root in roots):
            shown = ", ".join(map(str, roots)) or "none yet: start the server with --index-root FOLDER"
            raise ApiError(403, f"{text} is outside the folders this server indexes ({shown})", "PermissionError")
        if not path.exists():
            raise ApiError(422, f"{text} does not exist")
        paths.append(path)
    return paths


# --- the command ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, seconds: Callable[[str], float], at_least: Any) -> None:
    """``serve``'s own options (the index, model and chat-model options are ``ask``'s)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=at_least(0), default=8000, help="port to listen on")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require this bearer token (other users may see it in the process list: prefer ${API_KEY_ENV}); None: "
        f"${API_KEY_ENV}, if set",
    )
    parser.add_argument("--allow-index", action="store_true", help="accept POST /v1/index (else read-only)")
    parser.add_argument(
        "--index-root",
        action="append",
        default=[],
        metavar="FOLDER",
        help="with --allow-index, a folder POST /v1/index may read besides those the collection mirrors",
    )
    parser.add_argument("--max-request-bytes", type=at_least(1024), default=1 << 20, help="largest request body")
    parser.add_argument("--max-inputs", type=at_least(1), default=256, help="inputs or documents per request")
    parser.add_argument("--request-timeout", type=seconds, default=60.0, help="seconds a request may take")


def options_from(args: argparse.Namespace) -> ServeOptions:
    """The server's options from ``serve``'s (or ``mcp``'s) arguments; the key from the environment if not given."""
    key = getattr(args, "api_key", None)
    key = check_secret(key, "--api-key") if key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeOptions(
        api_key=key,
        allow_index=getattr(args, "allow_index", False),
        index_roots=tuple(getattr(args, "index_root", ())),
        max_request_bytes=getattr(args, "max_request_bytes", 1 << 20),
        max_inputs=getattr(args, "max_inputs", 256),
        request_timeout=getattr(args, "request_timeout", 60.0),
        llm_model=args.llm_model,
        llm_timeout=args.llm_timeout,
        no_llm=args.no_llm,
    )


def run_serve(config: "RagConfig", options: ServeOptions, host: str, port: int) -> int:
    """Serve until SIGTERM or Ctrl-C; the requests in flight then finish before this returns 0."""
    require("fastapi", "serve", "qwen3-rag serve")
    uvicorn = require("uvicorn", "serve", "qwen3-rag serve")
    from qwen3_retrieval.rag.pipeline import RagPipeline

    with RagPipeline(config) as pipeline:
        served = Served(pipeline, options)
        address = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

        def ready() -> None:
            locked = "" if options.api_key is None else ", API key required"
            writes = "read-write" if options.allow_index else "read-only"
            print(
                f"qwen3-rag: serving {config.collection!r} ({writes}{locked}) at {address}", file=sys.stderr, flush=True
            )

        server = uvicorn.Server(
            uvicorn.Config(
                create_app(served, on_ready=ready),
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=options.request_timeout + options.llm_timeout,
                lifespan="on",
            )
        )
        with _signals_stop_only():
            server.run()
        if not server.started:
            raise RagError(f"could not listen on {address}: is the port taken? pick another with --port")
    return 0


@contextlib.contextmanager
def _signals_stop_only() -> Iterator[None]:
    """While uvicorn runs, SIGTERM and SIGINT only stop it gracefully.

    uvicorn raises a signal it caught again once it has stopped; the command's own handlers would then report an
    interrupted run, where a served index stopping on SIGTERM is the normal end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
