"""A vLLM server as an engine: our exact token ids in, vectors or P(yes) out, whatever the server's flags.

vLLM accepts token ids as ``input`` on ``/v1/embeddings`` and on ``/classify``, and then applies no template,
adds no special token and truncates nothing, so the server returns exactly what the model computes for the ids
our prompt code built. Nothing about Qwen3's formats is decided here.

Requests are batched (at most ``max_batch`` sequences each) and sent with at most ``max_concurrency`` in flight;
429, 503 and dropped connections are retried with exponential backoff; every other failure is one line naming
the URL and the fix. A server is not trusted: each request has a deadline for its whole exchange, its answer a
size cap, and every row is checked (one per input, finite numbers of the right length, probabilities in [0, 1])
before anything is returned. The API key is sent as a bearer token, a password in the URL as basic
authentication; neither appears in a message (server error bodies are masked), a ``repr`` or a pickle.

One async implementation serves both APIs: a sync call runs it on a private event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import torch
from tqdm.auto import tqdm

from qwen3_retrieval._validation import check_base_url, check_positive_number
from qwen3_retrieval.batching import BatchPolicy
from qwen3_retrieval.engines import RerankPrompts, finish_progress
from qwen3_retrieval.errors import ServerError
from qwen3_retrieval.loading import LoadedEmbedding, pretrained
from qwen3_retrieval.options import EmbedderOptions, ModelOptions, RerankerOptions
from qwen3_retrieval.redaction import (
    check_secret,
    check_server_credentials,
    environment_secret,
    mask,
    split_credentials,
)
from qwen3_retrieval.tokenization import TextTokenizer

RETRY_STATUS = (429, 503)
# The largest answer accepted per input row: a 4096-wide float vector in JSON is about 100 kB.
MAX_ROW_BYTES = 256 * 1024
MAX_ERROR_BYTES = 64 * 1024

T = TypeVar("T")


class _BadAnswer(Exception):
    """A server's answer that cannot be used; the message says why (no URL: the caller adds it)."""


class _OtherPrompt(Exception):
    """The server counted another number of prompt tokens than the prompt built here has."""

    def __init__(self, counted: int, built: int) -> None:
        super().__init__(counted, built)
        self.counted, self.built = counted, built


# A chat request body made when its request is sent, with its prompt's length in tokens as built here.
ChatBody = tuple[Callable[[], Awaitable[dict[str, Any]]], int]


class VLLMServer:
    """Client of one vLLM server (or a balancer in front of many) for one served model.

    Args:
        base_url: The OpenAI-compatible root, e.g. ``"http://127.0.0.1:8000/v1"``. A ``user:password@`` in it
            (a proxy's) is sent as basic authentication instead of a key, and never shown.
        model: The model: its checkpoint path or hub id (what the tokenizer was loaded from).
        api_key: Bearer token, if the server was started with ``--api-key``; None reads ``VLLM_API_KEY`` from
            the environment, if set.
        timeout: Seconds one request may take in all: connecting, sending and receiving the whole answer. A
            retry gets a fresh deadline.
        max_batch: Sequences per request.
        max_concurrency: Requests in flight at once, per call.
        retries: Retries of one request after 429, 503 or a dropped connection.
        served_model_name: The name the server serves the model under (its ``--served-model-name``), sent as
            ``model``; None asks the server (see :meth:`_served_name`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_batch: int = 32,
        max_concurrency: int = 4,
        retries: int = 3,
        served_model_name: str | None = None,
    ) -> None:
        self.base_url, self._credentials = split_credentials(check_base_url(base_url).rstrip("/"))
        self.root = self.base_url.removesuffix("/v1")
        self.model = model
        # The name the server knows the model by: given, or asked once (see _served_name).
        self._served: str | None = served_model_name
        self.timeout = check_positive_number(timeout, "timeout")
        self.max_batch = max_batch
        self.max_concurrency = max_concurrency
        self.retries = retries
        check_server_credentials(base_url, api_key)
        self._api_key = check_secret(api_key, "api_key") if api_key is not None else None
        if api_key is None and self._credentials is None:
            self._api_key = environment_secret("VLLM_API_KEY")

    def __repr__(self) -> str:
        return f"VLLMServer(base_url={self.base_url!r}, model={self.model!r})"

    def __getstate__(self) -> dict[str, Any]:
        # As the options' (see qwen3_retrieval.redaction.without_secrets): the copy reads VLLM_API_KEY.
        return {**self.__dict__, "_api_key": None, "_credentials": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._api_key = environment_secret("VLLM_API_KEY")

    # --- the two exact endpoints ------------------------------------------------------------------------------

    def embed(self, sequences: list[list[int]], width: int | None = None) -> list[list[float]]:
        """Return the server's raw (unnormalised) pooled vector for each token-id sequence, in order.

        Args:
            sequences: Token ids, one list per text.
            width: The vector length the model gives (its hidden size); any other length is a bad answer.
        """
        return run_sync(lambda: self.aembed(sequences, width))

    async def aembed(self, sequences: list[list[int]], width: int | None = None) -> list[list[float]]:
        """Async :meth:`embed`: requests run concurrently on the event loop, no thread per call."""
        url = f"{self.base_url}/embeddings"
        # use_activation=false: the raw last-token state, which the core cuts (Matryoshka) and normalises itself.
        return await self._batched(
            sequences,
            url,
            lambda batch: {"input": batch, "use_activation": False},
            lambda row: _vector(row.get("embedding"), width),
        )

    def classify(self, sequences: list[list[int]]) -> list[float]:
        """Return the server's single-label probability (P(yes) for a Qwen3 reranker) for each sequence."""
        return run_sync(lambda: self.aclassify(sequences))

    async def aclassify(self, sequences: list[list[int]]) -> list[float]:
        """Async :meth:`classify`."""
        url = f"{self.root}/classify"
        return await self._batched(sequences, url, lambda batch: {"input": batch}, lambda row: _probability(row))

    # --- chat messages: the only form in which a server takes images ----------------------------------------

    async def aembed_chats(
        self, bodies: Sequence[ChatBody], width: int | None = None, fix: str = ""
    ) -> list[list[float]]:
        """Return the raw pooled vector of each chat request body (one conversation each), in order.

        Each body is made when its request is sent, so no more than ``max_concurrency`` are held at once. The
        server renders and tokenizes the messages itself, so the prompt length it reports (``usage``) must be the
        one built here: any other is a ``ValueError`` ending with ``fix``.
        """
        url = f"{self.base_url}/embeddings"
        read = lambda row: _vector(row.get("embedding"), width)  # noqa: E731
        return await self._send_all(url, [(make, 1, tokens) for make, tokens in bodies], read, fix)

    async def aclassify_chats(self, bodies: Sequence[ChatBody], fix: str = "") -> list[float]:
        """Return the single-label probability of each chat request body (one conversation each), in order."""
        requests = [(make, 1, tokens) for make, tokens in bodies]
        return await self._send_all(f"{self.root}/classify", requests, _probability, fix)

    # --- batching, concurrency, retries ---------------------------------------------------------------------

    async def _batched(
        self,
        sequences: list[list[int]],
        url: str,
        body: Callable[[list[list[int]]], dict[str, Any]],
        read_row: Callable[[dict[str, Any]], T],
    ) -> list[T]:
        batches = [sequences[i : i + self.max_batch] for i in range(0, len(sequences), self.max_batch)]
        return await self._send_all(url, [(_ready(body(batch)), len(batch), None) for batch in batches], read_row)

    async def _send_all(
        self,
        url: str,
        requests: Sequence[tuple[Callable[[], Awaitable[dict[str, Any]]], int, int | None]],
        read_row: Callable[[dict[str, Any]], T],
        fix: str = "",
    ) -> list[T]:
        """Send requests, at most ``max_concurrency`` at once; return all rows in request order.

        Each request is a body made when its turn comes (so bodies are not all held at once), its row count and,
        for a chat, its prompt's length in tokens (None: ids sent, nothing to compare).
        """
        gate = asyncio.Semaphore(self.max_concurrency)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers, auth=self._credentials) as client:
            served = await self._served_name(client)

            async def one(make: Callable[[], Awaitable[dict[str, Any]]], count: int, tokens: int | None) -> list[T]:
                async with gate:
                    body = {"model": served, **await make()}
                    return await self._post(client, url, body, count, read_row, (tokens, fix))

            results = await asyncio.gather(*(one(make, count, tokens) for make, count, tokens in requests))
        return [row for rows in results for row in rows]

    async def _served_name(self, client: httpx.AsyncClient) -> str:
        """The name to send as ``model``: ours if the server serves it, else the one it serves for our model.

        Production servers run with ``--served-model-name``, so the name they answer to is not the checkpoint
        we load the tokenizer from. ``/v1/models`` lists each served name with the checkpoint it was started
        from (``root``): the entry whose root is our model is it, and a server with a single model serves only
        that one. Asked once per client; if the list cannot be had, our name is sent and the server's answer
        says what is wrong.
        """
        if self._served is not None:
            return self._served
        try:
            response = await asyncio.wait_for(client.get(f"{self.base_url}/models"), self.timeout)
            listed = response.json()["data"] if response.status_code == 200 else None
        except (asyncio.TimeoutError, httpx.HTTPError, ValueError, TypeError, KeyError):
            listed = None
        if not isinstance(listed, list):
            return self.model  # no list (yet): send our name, and ask again next time
        names = [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        ours = [m["id"] for m in listed if isinstance(m, dict) and m.get("root") == self.model]
        served = self.model
        if self.model not in names and (len(ours) == 1 or len(names) == 1):
            served = ours[0] if len(ours) == 1 else names[0]
        self._served = served
        return served

    async def _post(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: dict[str, Any],
        expected: int,
        read_row: Callable[[dict[str, Any]], T],
        prompt: tuple[int | None, str] = (None, ""),
    ) -> list[T]:
        for attempt in range(self.retries + 1):
            try:
                # A deadline for the whole exchange: httpx's timeouts restart with every byte received, so a
                # server that drips its answer would hold the call for ever.
                status, raw = await asyncio.wait_for(
                    self._exchange(client, url, body, expected * MAX_ROW_BYTES + MAX_ERROR_BYTES), self.timeout
                )
            except (asyncio.TimeoutError, httpx.TimeoutException):
                raise self._error(
                    url, f"did not answer within {self.timeout:g} s; raise timeout= or check the server"
                ) from None
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise ServerError(
                        self._mask(
                            f"cannot reach the vLLM server at {url} ({type(err).__name__}: {err}); start it or fix "
                            "base_url"
                        )
                    ) from None
                await asyncio.sleep(_backoff(attempt))
                continue
            if status in RETRY_STATUS and attempt < self.retries:
                await asyncio.sleep(_backoff(attempt))
                continue
            if status != 200:
                raise self._http_error(url, status, raw)
            try:
                return _rows(raw, expected, read_row, prompt[0])
            except _BadAnswer as bad:
                raise self._error(url, f"sent an answer that cannot be used: {bad}") from None
            except _OtherPrompt as other:
                raise ValueError(
                    f"the vLLM server at {url} ran a prompt of {other.counted} tokens where the one computed here "
                    f"has {other.built}, so its answer would not be this prompt's{prompt[1]}"
                ) from None
        raise AssertionError("unreachable")

    async def _exchange(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], cap: int) -> tuple[int, bytes]:
        async with client.stream("POST", url, json=body) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise self._too_large(url, int(declared), cap)
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise self._too_large(url, size, cap)
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    # --- one-line errors, secrets masked ----------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        password = self._credentials[1] if self._credentials else None  # the user name is no secret
        return mask(text, [self._api_key, password])

    def _error(self, url: str, problem: str) -> ServerError:
        return ServerError(self._mask(f"the vLLM server at {url} {problem}"))

    def _too_large(self, url: str, size: int, cap: int) -> ServerError:
        return self._error(url, f"sent an answer of more than {cap} bytes ({size} so far), too large for the request")

    def _http_error(self, url: str, status: int, raw: bytes) -> Exception:
        message = self._mask(_server_message(raw))
        lowered = message.lower()
        where = f"the vLLM server at {url}"
        if status == 401:
            return ValueError(
                f"{where} refused the API key (HTTP 401); pass the key it was started with as api_key= or set "
                "VLLM_API_KEY (keys are not carried by pickled copies: set VLLM_API_KEY where they run)"
            )
        if status == 404 and lowered in ("not found", ""):  # no such route: the server runs another kind of model
            kind, fix = (
                ("an embedding", "`vllm serve MODEL --runner pooling`")
                if url.endswith("/embeddings")
                else ("a reranker", "the --hf-overrides of docs/engines.md for an original Qwen3-Reranker")
            )
            return ValueError(
                f"{where} has no such endpoint: it does not serve {kind} model; point the URL at a server started "
                f"with {fix}"
            )
        if status == 404 and "model" in lowered:
            return ValueError(
                f"{where} does not serve model {self.model!r} ({message}); pass the served name as the model's "
                "served_model_name= (qwen3-rag: --embedding-served-name, --reranker-served-name)"
            )
        if "--trust-request" in lowered:  # vLLM gates per-request processor settings and templates (videos)
            return ValueError(
                f"{where} refused the request's per-request settings ({message}); videos over base_url= need a "
                "server started with --trust-request-mm-kwargs --trust-request-chat-template (docs/qwen3-vl.md)"
            )
        if "context length" in lowered or "max_model_len" in lowered or "maximum model length" in lowered:
            return ValueError(
                f"{where} refused an input as too long ({message}); lower max_length to the server's "
                "--max-model-len or restart it with a larger one"
            )
        return ServerError(f"{where} answered HTTP {status}: {message}")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also from a thread that runs an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3-retrieval-http") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _ready(value: T) -> Callable[[], Awaitable[T]]:
    """A request body made already, in the form of one made when sent."""

    async def make() -> T:
        return value

    return make


def _backoff(attempt: int) -> float:
    return 0.5 * 2**attempt


def _rows(raw: bytes, expected: int, read_row: Callable[[dict[str, Any]], T], tokens: int | None = None) -> list[T]:
    """The rows of a ``{"data": [{"index": i, ...}]}`` answer in index order, each checked by ``read_row``.

    With ``tokens``, the answer's ``usage.prompt_tokens`` (which vLLM always sends) must be that length.
    """
    try:
        payload = json.loads(raw)
    except ValueError:
        raise _BadAnswer("it is not JSON") from None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    counted = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if tokens is not None:
        if type(counted) is not int:
            raise _BadAnswer("it has no 'usage.prompt_tokens' count to check the prompt it ran against")
        if counted != tokens:
            raise _OtherPrompt(counted, tokens)
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise _BadAnswer("it has no 'data' list")
    if len(data) != expected:
        raise _BadAnswer(f"{len(data)} rows for {expected} inputs")
    rows: list[T | None] = [None] * expected
    for row in data:
        index = row.get("index") if isinstance(row, dict) else None
        if type(index) is not int or not 0 <= index < expected or rows[index] is not None:
            raise _BadAnswer(f"row indexes must be 0 to {expected - 1}, each once; got {str(index)[:20]!r}")
        rows[index] = read_row(row)
    return rows  # type: ignore[return-value]  # every index was filled exactly once


def _number(value: object) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise _BadAnswer(f"expected a finite number, got {str(value)[:20]!r}")
    return float(value)  # type: ignore[arg-type]


def _vector(value: object, width: int | None) -> list[float]:
    if not isinstance(value, list) or not value:
        raise _BadAnswer("a row has no 'embedding' list")
    if width is not None and len(value) != width:
        raise _BadAnswer(f"a vector of {len(value)} numbers where the model gives {width}; is it the same model?")
    return [_number(v) for v in value]


def _probability(row: dict[str, Any]) -> float:
    probs = row.get("probs")
    if not isinstance(probs, list) or len(probs) != 1:
        raise _BadAnswer(
            "a row has no one-label 'probs' list; is the server a reranker started as docs/engines.md shows?"
        )
    p = _number(probs[0])
    if not 0.0 <= p <= 1.0:
        raise _BadAnswer(f"a probability of {p!r}, outside 0 to 1")
    return p


def _server_message(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error.get("detail", error)) if isinstance(error, dict) else error
    return " ".join(str(message).split())[:300]


class HttpEmbedding:
    """:class:`~qwen3_retrieval.engines.EmbeddingEngine` over a vLLM embedding server's ``/v1/embeddings``."""

    def __init__(self, server: VLLMServer, width: int) -> None:
        self.server, self.width = server, width

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return the server's vector for each sequence."""
        rows = self.server.embed([list(s) for s in sequences], self.width)
        finish_progress(progress, len(rows))
        return torch.tensor(rows, dtype=torch.float32)

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`."""
        return torch.tensor(await self.server.aembed([list(s) for s in sequences], self.width), dtype=torch.float32)


class HttpScoring:
    """:class:`~qwen3_retrieval.engines.ScoringEngine` over a vLLM reranker server's ``/classify``."""

    def __init__(self, server: VLLMServer) -> None:
        self.server = server

    def score(self, prompts: RerankPrompts, policy: BatchPolicy, progress: tqdm | None) -> list[float]:
        """Return P(yes) of each full prompt ``prefix + tail``."""
        scores = self.server.classify(prompts.whole())
        finish_progress(progress, len(scores))
        return scores

    async def ascore(self, prompts: RerankPrompts, policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        return await self.server.aclassify(prompts.whole())


# --- loading (see qwen3_retrieval.engines.registry) -----------------------------------------------------------


def load_embedding(options: EmbedderOptions, tokenizer: TextTokenizer) -> LoadedEmbedding:
    """Reach an embedding server; only the model's config is read here, for its width."""
    config = pretrained(options, "AutoConfig")
    return LoadedEmbedding(tokenizer, HttpEmbedding(server_for(options), config.hidden_size), config.hidden_size)


def load_scoring(
    options: RerankerOptions, tokenizer: TextTokenizer, config: Any, yes_no: tuple[int, int] | None
) -> HttpScoring:
    """Reach a reranker server."""
    return HttpScoring(server_for(options))


def server_for(options: ModelOptions) -> VLLMServer:
    """The client of the server the options name (``base_url``, checked with its key when they were built)."""
    assert options.base_url is not None
    return VLLMServer(
        options.base_url,
        options.model,
        api_key=options.server_key,
        timeout=options.timeout,
        served_model_name=options.served_model_name,
        max_batch=options.max_batch,
        max_concurrency=options.max_concurrency,
    )
