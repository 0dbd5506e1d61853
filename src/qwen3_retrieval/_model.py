"""What the embedder and the reranker share: options, lazy loading and the batched forward pass."""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import replace
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from qwen3_retrieval._validation import check_base_url, check_non_negative, check_positive_int, check_positive_number
from qwen3_retrieval.devices import (
    batch_policy,
    resolve_device,
    resolve_dtype,
)
from qwen3_retrieval.loading import load_error, load_shared, model_source, quiet_transformers
from qwen3_retrieval.packing import register_packed_attention
from qwen3_retrieval.redaction import check_secret, environment_secret, redact_url, split_credentials

L = TypeVar("L")


def resolve_engine(engine: str | None, base_url: str | None) -> str:
    """Return ``"transformers"``, ``"vllm"`` (in process) or ``"http"`` (a vLLM server at ``base_url``)."""
    if base_url is not None:
        if engine not in (None, "vllm"):
            raise ValueError(f"base_url= runs on a vLLM server, but engine={engine!r} was asked for; drop one of them")
        check_base_url(base_url)
        return "http"
    if engine in (None, "transformers"):
        return "transformers"
    if engine == "vllm":
        return "vllm"
    raise ValueError(f"unknown engine {engine!r}; use 'transformers' (default) or 'vllm', or base_url= for a server")


class LazyModel(Generic[L]):
    """Holds the options of one model and loads it, shared and once, on first use."""

    _kind: str = ""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        max_length: int,
        batch_tokens: int | None,
        show_progress: bool,
        batch_wait_ms: float | None = 2.0,
        attn_implementation: str | None,
        engine: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.engine = resolve_engine(engine, base_url)
        self.engine_options = dict(engine_options or {})
        # The URL as given may hold a password (http://user:pass@host): it is kept private, and shown redacted.
        self._base_url = base_url
        self.base_url = redact_url(base_url) if base_url is not None else None
        self._api_key = check_secret(api_key, "api_key") if api_key is not None else None
        if self._api_key is None and base_url is not None and split_credentials(base_url)[1] is None:
            # Read here, not when the server client is made: the key is part of which loaded model is shared.
            self._api_key = environment_secret("VLLM_API_KEY")
        self.timeout = check_positive_number(timeout, "timeout")
        # A hub id or folder names the tokenizer (and, in process, the weights); a server needs no local folder.
        self.model = model_source(model) if self.engine != "http" else str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_length = check_positive_int(max_length, "max_length", minimum=2)
        # The packed layout owns attention (its own function, registered with transformers); a kernel the caller
        # names runs padded batches instead.
        self.policy = batch_policy(self.device, packed=attn_implementation is None)
        self.batch_tokens = batch_tokens
        if batch_tokens is not None:
            self.policy = replace(self.policy, batch_tokens=check_positive_int(batch_tokens, "batch_tokens"))
        self.batch_wait_ms = batch_wait_ms
        if batch_wait_ms is None:
            self.policy = replace(self.policy, micro_batch=False)
        else:
            self.policy = replace(self.policy, batch_wait_s=check_non_negative(batch_wait_ms, "batch_wait_ms") / 1000)
        self.show_progress = bool(show_progress)
        self.attn_implementation = attn_implementation
        self._loaded: L | None = None

    def __repr__(self) -> str:
        if self.engine == "http":
            return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"
        return f"{type(self).__name__}(model={self.model!r}, device='{self.device}', dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (e.g. LlamaIndex's IngestionPipeline with num_workers > 1) copies the options, never the
        # weights: the copy loads lazily, and shares the process-wide model if one is loaded there.
        # Secrets never travel in a pickle: a copy reads VLLM_API_KEY where it runs, and has no URL password.
        state = dict(self.__dict__)
        state["_loaded"] = None
        state["_api_key"] = None
        if self._base_url is not None:
            state["_base_url"] = split_credentials(self._base_url)[0]
        return state

    @property
    def cache_key(self) -> Hashable:
        """The key under which the loaded model is shared with other objects in this process."""
        where = (self.engine, self.base_url, hash((self._base_url, self._api_key)))
        return (self._kind, self.model, str(self.device), str(self.dtype), self.attn_implementation, *where)

    def _state(self) -> L:
        """Return the loaded model, loading it (or taking the shared copy) on first use."""
        if self._loaded is None:
            self._loaded = load_shared(self.cache_key, self._load)
        return self._loaded

    def _load(self) -> L:
        raise NotImplementedError

    def _pretrained(self, auto_class: Any, **kwargs: Any) -> Any:
        """Call ``auto_class.from_pretrained`` on our model, turning "cannot load" into a clear ``ValueError``."""
        try:
            with quiet_transformers(not self.show_progress):
                return auto_class.from_pretrained(self.model, trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as err:
            raise load_error(self.model, err) from err

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return self._pretrained(AutoTokenizer)

    def _load_config(self) -> Any:
        from transformers import AutoConfig

        return self._pretrained(AutoConfig)

    def _load_weights(self, auto_class: Any) -> Any:
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        kwargs["attn_implementation"] = self.attn_implementation or register_packed_attention()
        return self._pretrained(auto_class, **kwargs).to(self.device).eval()

    def _server(self) -> Any:
        from qwen3_retrieval.engines.vllm_http import VLLMServer

        assert self._base_url is not None
        return VLLMServer(self._base_url, self.model, api_key=self._api_key, timeout=self.timeout)

    def _vllm_options(self, config: Any) -> dict[str, Any]:
        from qwen3_retrieval.engines.vllm_local import kv_cache_bytes

        return {"kv_cache_memory_bytes": kv_cache_bytes(config, self.dtype, self.max_length), **self.engine_options}

    def _progress(self, total: int, desc: str) -> tqdm | None:
        return tqdm(total=total, desc=desc, unit="text") if self.show_progress else None


class RuntimeProperties:
    """Read-only views of the loading options, for the public model classes that hold a ``_runtime``."""

    _runtime: LazyModel[Any]

    @property
    def model(self) -> str:
        """The hub id or folder the model is loaded from."""
        return self._runtime.model

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self._runtime.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model weights."""
        return self._runtime.dtype

    @property
    def max_length(self) -> int:
        """The longest token sequence (with the trailing ``<|endoftext|>`` or the prompt template)."""
        return self._runtime.max_length

    @property
    def engine(self) -> str:
        """``"transformers"`` or ``"vllm"`` in this process, or ``"http"`` for a vLLM server at ``base_url``."""
        return self._runtime.engine

    @property
    def base_url(self) -> str | None:
        """The vLLM server's URL (a password in it shown as ``***``), or None in process."""
        return self._runtime.base_url

    @property
    def batch_tokens(self) -> int | None:
        """The token budget of one batch as given; None means the device's default."""
        return self._runtime.batch_tokens

    @property
    def batch_wait_ms(self) -> float | None:
        """How long a merged batch waits for more concurrent calls; None: each call runs alone."""
        return self._runtime.batch_wait_ms
