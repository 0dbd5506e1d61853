"""A vLLM server as an engine: our exact token ids in, vectors or P(yes) out, whatever the server's flags.

vLLM accepts token ids as ``input`` on ``/v1/embeddings`` and on ``/classify``, and then applies no template,
adds no special token and truncates nothing, so the server returns exactly what the model computes for the ids
our prompt code built. Nothing about Qwen3's formats is decided here.

Requests are batched (at most ``max_batch`` sequences each) and sent with at most ``max_concurrency`` in flight;
429, 503 and dropped connections are retried with exponential backoff; every other failure is one line naming
the URL and the fix. The API key is sent as a bearer token and appears in no message and no ``repr``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import torch
from tqdm.auto import tqdm

from qwen3_retrieval._validation import check_base_url
from qwen3_retrieval.devices import BatchPolicy
from qwen3_retrieval.engines import finish_progress
from qwen3_retrieval.errors import ServerError

RETRY_STATUS = (429, 503)


class VLLMServer:
    """Client of one vLLM server (or a balancer in front of many) for one served model.

    Args:
        base_url: The OpenAI-compatible root, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: The served model name sent with each request.
        api_key: Bearer token, if the server was started with ``--api-key``.
        timeout: Seconds to wait for one request.
        max_batch: Sequences per request.
        max_concurrency: Requests in flight at once, per call and per client.
        retries: Retries of one request after 429, 503 or a dropped connection.
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
    ) -> None:
        self.base_url = check_base_url(base_url).rstrip("/")
        self.root = self.base_url.removesuffix("/v1")
        self.model = model
        self.timeout = float(timeout)
        self.max_batch = max_batch
        self.max_concurrency = max_concurrency
        self.retries = retries
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"VLLMServer(base_url={self.base_url!r}, model={self.model!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"]  # clients hold sockets; each process (and thread) opens its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # --- the two exact endpoints ------------------------------------------------------------------------------

    def embed(self, sequences: list[list[int]]) -> list[list[float]]:
        """Return the server's raw (unnormalised) pooled vector for each token-id sequence, in order."""
        return self._batched(sequences, lambda batch: self._post_sync(*self._embed_request(batch)))

    async def aembed(self, sequences: list[list[int]]) -> list[list[float]]:
        """Async :meth:`embed`: requests run concurrently on the event loop, no thread per call."""
        return await self._abatched(sequences, lambda batch: self._post_async(*self._embed_request(batch)))

    def classify(self, sequences: list[list[int]]) -> list[float]:
        """Return the server's single-label probability (P(yes) for a Qwen3 reranker) for each sequence."""
        return [p[0] for p in self._batched(sequences, lambda batch: self._post_sync(*self._classify_request(batch)))]

    async def aclassify(self, sequences: list[list[int]]) -> list[float]:
        """Async :meth:`classify`."""
        rows = await self._abatched(sequences, lambda batch: self._post_async(*self._classify_request(batch)))
        return [p[0] for p in rows]

    def _embed_request(self, batch: list[list[int]]) -> tuple[str, dict[str, Any], str]:
        # use_activation=false: the raw last-token state, which the core cuts (Matryoshka) and normalises itself.
        body = {"model": self.model, "input": batch, "use_activation": False}
        return f"{self.base_url}/embeddings", body, "embedding"

    def _classify_request(self, batch: list[list[int]]) -> tuple[str, dict[str, Any], str]:
        return f"{self.root}/classify", {"model": self.model, "input": batch}, "probs"

    # --- batching and concurrency -----------------------------------------------------------------------------

    def _batches(self, sequences: list[list[int]]) -> list[list[list[int]]]:
        return [sequences[i : i + self.max_batch] for i in range(0, len(sequences), self.max_batch)]

    def _batched(self, sequences: list[list[int]], send: Callable[[list[list[int]]], list[Any]]) -> list[Any]:
        batches = self._batches(sequences)
        if len(batches) == 1:
            return send(batches[0])
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batches))) as pool:
            return [row for rows in pool.map(send, batches) for row in rows]

    async def _abatched(
        self, sequences: list[list[int]], send: Callable[[list[list[int]]], Awaitable[list[Any]]]
    ) -> list[Any]:
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(batch: list[list[int]]) -> list[Any]:
            async with gate:
                return await send(batch)

        results = await asyncio.gather(*(one(b) for b in self._batches(sequences)))
        return [row for rows in results for row in rows]

    # --- HTTP with retries and one-line errors ----------------------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=self.timeout, headers=self._headers)
        return client

    def _post_sync(self, url: str, body: dict[str, Any], field: str) -> list[Any]:
        for attempt in range(self.retries + 1):
            try:
                response = self._sync_client().post(url, json=body)
            except httpx.TimeoutException:
                raise self._timeout_error(url) from None
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise self._unreachable_error(url, err) from None
                time.sleep(_backoff(attempt))
                continue
            if response.status_code in RETRY_STATUS and attempt < self.retries:
                time.sleep(_backoff(attempt))
                continue
            return self._rows(url, response, field, len(body["input"]))
        raise AssertionError("unreachable")

    async def _post_async(self, url: str, body: dict[str, Any], field: str) -> list[Any]:
        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers) as client:
            for attempt in range(self.retries + 1):
                try:
                    response = await client.post(url, json=body)
                except httpx.TimeoutException:
                    raise self._timeout_error(url) from None
                except httpx.TransportError as err:
                    if attempt == self.retries:
                        raise self._unreachable_error(url, err) from None
                    await asyncio.sleep(_backoff(attempt))
                    continue
                if response.status_code in RETRY_STATUS and attempt < self.retries:
                    await asyncio.sleep(_backoff(attempt))
                    continue
                return self._rows(url, response, field, len(body["input"]))
        raise AssertionError("unreachable")

    def _rows(self, url: str, response: httpx.Response, field: str, expected: int) -> list[Any]:
        if response.status_code != 200:
            raise self._http_error(url, response)
        data = sorted(response.json()["data"], key=lambda row: row["index"])
        if len(data) != expected:
            raise ServerError(f"the vLLM server at {url} answered {len(data)} rows for {expected} inputs")
        return [row[field] for row in data]

    def _http_error(self, url: str, response: httpx.Response) -> Exception:
        message = _server_message(response)
        status = response.status_code
        lowered = message.lower()
        where = f"the vLLM server at {url}"
        if status == 401:
            return ValueError(f"{where} refused the API key (HTTP 401); pass the key it was started with as api_key=")
        if status == 404 and lowered == "not found":  # no such route: the server runs another kind of model
            kind, fix = (
                ("an embedding", "`vllm serve MODEL --runner pooling`")
                if url.endswith("/embeddings")
                else ("a reranker", "the --hf-overrides of the README for an original Qwen3-Reranker")
            )
            return ValueError(
                f"{where} has no such endpoint: it does not serve {kind} model; point the URL at a server started "
                f"with {fix}"
            )
        if status == 404 and "model" in lowered:
            return ValueError(
                f"{where} does not serve model {self.model!r} ({message}); pass the served name as the model, or "
                "start the server with --served-model-name"
            )
        if "context length" in lowered or "max_model_len" in lowered or "maximum model length" in lowered:
            return ValueError(
                f"{where} refused an input as too long ({message}); lower max_length to the server's "
                "--max-model-len or restart it with a larger one"
            )
        return ServerError(f"{where} answered HTTP {status}: {message}")

    def _unreachable_error(self, url: str, err: Exception) -> ServerError:
        return ServerError(
            f"cannot reach the vLLM server at {url} ({type(err).__name__}: {err}); start it or fix base_url"
        )

    def _timeout_error(self, url: str) -> ServerError:
        return ServerError(
            f"the vLLM server at {url} did not answer within {self.timeout:g} s; raise timeout= or check the server"
        )


def _backoff(attempt: int) -> float:
    return 0.5 * 2**attempt


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error.get("detail", error)) if isinstance(error, dict) else error
    return " ".join(str(message).split())[:300]


class HttpEmbedding:
    """:class:`~qwen3_retrieval.engines.EmbeddingEngine` over a vLLM embedding server's ``/v1/embeddings``."""

    def __init__(self, server: VLLMServer) -> None:
        self.server = server

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return the server's vector for each sequence."""
        rows = self.server.embed([list(s) for s in sequences])
        finish_progress(progress, len(rows))
        return torch.tensor(rows, dtype=torch.float32)

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`."""
        return torch.tensor(await self.server.aembed([list(s) for s in sequences]), dtype=torch.float32)


class HttpScoring:
    """:class:`~qwen3_retrieval.engines.ScoringEngine` over a vLLM reranker server's ``/classify``."""

    def __init__(self, server: VLLMServer) -> None:
        self.server = server

    def score(
        self, prefix: list[int], tails: list[list[int]], policy: BatchPolicy, progress: tqdm | None
    ) -> list[float]:
        """Return P(yes) of each full prompt ``prefix + tail``."""
        scores = self.server.classify([prefix + tail for tail in tails])
        finish_progress(progress, len(scores))
        return scores

    async def ascore(self, prefix: list[int], tails: list[list[int]], policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        return await self.server.aclassify([prefix + tail for tail in tails])
