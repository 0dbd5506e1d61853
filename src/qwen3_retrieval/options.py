"""The options of one model: the only list of them, checked and resolved once.

:class:`EmbedderOptions` and :class:`RerankerOptions` are frozen records. Building one checks every value and
resolves what ``None`` means here (device, dtype, engine, batch policy), so the record holds what will run and
nothing is checked again on a call. :meth:`ModelOptions.dump` gives plain values that rebuild an equal record.
The core classes take these options as keyword arguments, and the LangChain and LlamaIndex components get their
pydantic fields, with these docstrings, from the same records (see :mod:`qwen3_retrieval._fields`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from qwen3_retrieval._validation import (
    check_base_url,
    check_instruction,
    check_non_negative,
    check_positive_int,
    check_positive_number,
)
from qwen3_retrieval.batching import BatchPolicy, default_policy
from qwen3_retrieval.devices import resolve_device, resolve_dtype
from qwen3_retrieval.engines.registry import DEFAULT as DEFAULT_ENGINE
from qwen3_retrieval.engines.registry import ENGINES, EngineEntry
from qwen3_retrieval.engines.registry import resolve as resolve_engine
from qwen3_retrieval.prompts import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_INSTRUCTION,
    DEFAULT_RERANKER_MODEL,
    MIN_DIMENSIONS,
)
from qwen3_retrieval.redaction import (
    check_secret,
    check_server_credentials,
    environment_secret,
    redact_url,
    split_credentials,
    without_secrets,
)
from qwen3_retrieval.vl.media import MAX_PIXELS, MIN_PIXELS
from qwen3_retrieval.vl.prompts import (
    DEFAULT_VL_EMBEDDING_MODEL,
    DEFAULT_VL_RERANKER_MODEL,
    VL_QUERY_INSTRUCTION,
    VL_RERANK_INSTRUCTION,
)


def _option(default: Any, doc: str, **kwargs: Any) -> Any:
    # The docstring travels with the field: the framework components show it as their field's description.
    return field(default=default, metadata={"doc": doc}, **kwargs)


@dataclass(frozen=True, kw_only=True, repr=False)
class ModelOptions:
    """What the embedder and the reranker share. Build :class:`EmbedderOptions` or :class:`RerankerOptions`."""

    kind: ClassVar[str] = ""

    model: str = _option("", "Hub id or local folder of the checkpoint.", kw_only=False)
    device: str | None = _option(
        None, "``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'mps'`` (or a ``torch.device``); None: the best available."
    )
    dtype: str | None = _option(
        None,
        "``'float32'``, ``'bfloat16'``, ``'float16'`` (or a ``torch.dtype``); None: bfloat16 on capable GPUs, "
        "else float32.",
    )
    instruction: str = _option(
        DEFAULT_INSTRUCTION, "Default task instruction (the model cards' web-search one); ``''`` for none."
    )
    max_length: int = _option(
        8192,
        "Longest token sequence: per text with its trailing ``<|endoftext|>`` (embedding), per prompt with the "
        "template (reranking); longer input is cut, the template kept.",
    )
    batch_tokens: int | None = _option(
        None, "Token budget of one batch (real tokens when packed); None: the batch policy's (set per device)."
    )
    batch_wait_ms: float | None = _option(
        2.0,
        "Concurrent calls on one model run merged in shared batches by one worker; while calls stream in, a "
        "batch waits up to this long for more (a lone call never waits). None runs each call alone in its "
        "caller's thread. In-process engines only.",
    )
    batch_policy: BatchPolicy | None = _option(
        None,
        "How batches are laid out and bounded (:class:`~qwen3_retrieval.batching.BatchPolicy`); None: the "
        "device's default. ``batch_tokens`` and ``batch_wait_ms`` apply on top of it.",
    )
    show_progress: bool = _option(False, "Show a tqdm progress bar.")
    attn_implementation: str | None = _option(
        None,
        "None runs packed batches (sequences end to end, no padding, attention inside each); a transformers "
        "kernel named here (``'sdpa'``, ``'eager'``, ``'flash_attention_2'``) runs padded batches instead.",
    )
    compile: bool | str = _option(
        "auto",
        "Run the element-wise work between the matrix multiplies as compiled code (inductor; CPU, float32 and "
        "bfloat16, in-process engine): ``'auto'`` where it measured faster and a C++ compiler is present, "
        "``True``, or ``False``. The compile runs in the background while the first calls run eager, and is "
        "cached on disk ($QWEN3_RETRIEVAL_CACHE, else ~/.cache/qwen3-retrieval) for the next process.",
    )
    engine: str | None = _option(
        None,
        "``'transformers'`` (the default) or ``'vllm'`` (``vllm.LLM`` in this process); ``'http'`` (implied by "
        "``base_url``) is a vLLM server.",
    )
    base_url: str | None = _option(
        None,
        "A vLLM server's OpenAI-compatible URL (``'http://host:8000/v1'``) to run the model on; only the "
        "tokenizer is loaded here. A password in it is sent as basic authentication and never shown.",
    )
    api_key: str | None = _option(
        None,
        "The server's key (``--api-key``); None reads ``VLLM_API_KEY``, if set. Never shown in a message or "
        "``repr``, never pickled.",
        repr=False,
    )
    timeout: float = _option(120.0, "Seconds one server request may take in all, answer included.")
    served_model_name: str | None = _option(
        None,
        "The name the vLLM server serves the model under (its ``--served-model-name``); None asks the server's "
        "``/v1/models`` for the one started from ``model``, or the only one it serves.",
    )
    max_concurrency: int = _option(
        4, "With ``base_url``: requests in flight at once per call (raise it for a fleet behind one URL)."
    )
    max_batch: int = _option(32, "With ``base_url``: sequences per request.")
    engine_options: dict[str, Any] | None = _option(
        None,
        "Extra arguments for ``vllm.LLM`` with ``engine='vllm'`` (``tensor_parallel_size``…); by default its "
        "KV cache holds two ``max_length`` prompts instead of most of the machine's memory.",
    )

    def __post_init__(self) -> None:
        resolved = self._resolved()
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        # VLLM_API_KEY is read here, once: the key is part of which loaded model is shared (see cache_key).
        key = self.api_key
        if key is None and self.base_url is not None and split_credentials(self.base_url)[1] is None:
            key = environment_secret("VLLM_API_KEY")
        object.__setattr__(self, "_key", key)

    def _resolved(self) -> dict[str, Any]:
        """Every field checked, and each ``None`` that depends on this machine replaced by what it means here."""
        entry = resolve_engine(self.engine, self.base_url)
        engine = entry.name
        device = resolve_device(self.device)
        values: dict[str, Any] = {
            # A server needs no local folder: the name is only the tokenizer's source and the served model's.
            "model": model_source(self.model) if not entry.server else str(self.model),
            "device": str(device),
            "dtype": str(resolve_dtype(self.dtype, device)).removeprefix("torch."),
            "instruction": check_instruction(self.instruction),
            "max_length": check_positive_int(self.max_length, "max_length", minimum=2),
            "show_progress": bool(self.show_progress),
            "engine": engine,
            "base_url": check_base_url(self.base_url) if self.base_url is not None else None,
            "api_key": check_secret(self.api_key, "api_key") if self.api_key is not None else None,
            "timeout": check_positive_number(self.timeout, "timeout"),
            "served_model_name": _served_name(self.served_model_name),
            "max_concurrency": check_positive_int(self.max_concurrency, "max_concurrency"),
            "max_batch": check_positive_int(self.max_batch, "max_batch"),
            "engine_options": dict(self.engine_options) if self.engine_options is not None else None,
            "compile": _compile_setting(self.compile),
        }
        policy = self.batch_policy or default_policy(device, packed=self.attn_implementation is None)
        if not isinstance(policy, BatchPolicy):
            raise TypeError(f"batch_policy must be a BatchPolicy or None, not {type(policy).__name__}")
        if self.batch_tokens is not None:
            policy = replace(policy, batch_tokens=check_positive_int(self.batch_tokens, "batch_tokens"))
        if self.batch_wait_ms is None:
            policy = replace(policy, micro_batch=False)
        else:
            wait_s = check_non_negative(self.batch_wait_ms, "batch_wait_ms") / 1000
            policy = replace(policy, micro_batch=True, batch_wait_s=wait_s)
        values["batch_policy"] = policy
        if self.base_url is not None:
            check_server_credentials(self.base_url, self.api_key)
        return values

    def __repr__(self) -> str:
        values = {**self.dump(), "base_url": self.shown_url}
        shown = ", ".join(
            f"{name}={value!r}" for name, value in values.items() if name not in ("api_key", "batch_policy")
        )
        return f"{type(self).__name__}({shown})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, **self.dump(), "_key": None}  # dump() leaves the secrets out

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.base_url is not None:
            object.__setattr__(self, "_key", environment_secret("VLLM_API_KEY"))

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Return each option's one-line documentation, by name, in declaration order."""
        return {f.name: f.metadata["doc"] for f in fields(cls)}

    def dump(self, *, secrets: bool = False) -> dict[str, Any]:
        """Return every option's value; ``type(self)(**dump(secrets=True))`` rebuilds an equal record.

        Args:
            secrets: Include ``api_key`` and a password in ``base_url``. Without them, a rebuilt record reads
                ``VLLM_API_KEY`` where it is built, as a pickled copy does.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return values if secrets else without_secrets(values)

    @property
    def policy(self) -> BatchPolicy:
        """The batch policy in force (``batch_policy`` as resolved: never None)."""
        assert self.batch_policy is not None  # resolved in __post_init__
        return self.batch_policy

    @property
    def runs_on(self) -> EngineEntry:
        """The engine, as :mod:`~qwen3_retrieval.engines.registry` lists it."""
        return ENGINES[self.engine or DEFAULT_ENGINE]

    @property
    def torch_device(self) -> torch.device:
        """The device as a ``torch.device``."""
        return torch.device(self.device or "cpu")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weight dtype as a ``torch.dtype``."""
        return getattr(torch, self.dtype or "float32")

    @property
    def shown_url(self) -> str | None:
        """``base_url`` with a password in it shown as ``***``."""
        return redact_url(self.base_url) if self.base_url is not None else None

    @property
    def server_key(self) -> str | None:
        """The key sent to the server: ``api_key``, or ``VLLM_API_KEY`` as read when these options were built."""
        return self.__dict__["_key"]

    @property
    def cache_key(self) -> Hashable:
        """Options under which one loaded model is shared by every object in the process."""
        secret = hash((self.base_url, self.server_key))  # two keys or passwords never share a client
        server = (self.served_model_name, self.max_concurrency, self.max_batch) if self.base_url else ()
        where = (self.engine, self.shown_url, secret, *server)
        return (self.kind, self.model, self.device, self.dtype, self.attn_implementation, self.compile, *where)


@dataclass(frozen=True, kw_only=True, repr=False)
class EmbedderOptions(ModelOptions):
    """The options of :class:`~qwen3_retrieval.Qwen3Embedder`."""

    kind: ClassVar[str] = "embedding"

    model: str = _option(
        DEFAULT_EMBEDDING_MODEL, "Hub id or local folder of a Qwen3-Embedding checkpoint.", kw_only=False
    )
    dimensions: int | None = _option(
        None, f"Matryoshka output size, {MIN_DIMENSIONS} to the model's hidden size; None keeps the full size."
    )
    normalize: bool = _option(
        True, "L2-normalise the vectors (the model cards do; cosine similarity then equals the dot product)."
    )

    def _resolved(self) -> dict[str, Any]:
        values = super()._resolved()
        if self.dimensions is not None:
            values["dimensions"] = check_positive_int(self.dimensions, "dimensions", minimum=MIN_DIMENSIONS)
        values["normalize"] = bool(self.normalize)
        return values


@dataclass(frozen=True, kw_only=True, repr=False)
class RerankerOptions(ModelOptions):
    """The options of :class:`~qwen3_retrieval.Qwen3Reranker`."""

    kind: ClassVar[str] = "reranker"

    model: str = _option(
        DEFAULT_RERANKER_MODEL,
        "Hub id or local folder of a Qwen3-Reranker checkpoint (causal LM or converted seq-cls).",
        kw_only=False,
    )


def model_source(model: str | os.PathLike[str]) -> str:
    """Return ``model`` as a string, raising ``ValueError`` for a local path that does not exist.

    A string that names an existing folder is a local checkpoint. One that looks like a path (starts with ``.``,
    ``/`` or ``~``, or has more than one ``/``) but is missing is reported here, before transformers turns it
    into a confusing hub lookup. Anything else is treated as a hub id such as ``Qwen/Qwen3-Embedding-0.6B``.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a hub id or a folder path, got {type(model).__name__}")
    text = os.fspath(model)
    if not text.strip():
        raise ValueError("model is empty; pass a hub id such as 'Qwen/Qwen3-Embedding-0.6B' or a local folder")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if isinstance(model, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"model folder {text!r} does not exist; pass an existing checkpoint folder or a hub id")
    return text


def _compile_setting(value: object) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"compile must be 'auto', True or False, got {value!r}")
    raise TypeError(f"compile must be 'auto', True or False, not {type(value).__name__}")


def _served_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"served_model_name must be a non-empty string or None, got {name!r}")
    return name


def options_of(model: str | os.PathLike[str], given: Mapping[str, Any], cls: type[ModelOptions]) -> Any:
    """Build ``cls`` from a core class's constructor arguments, naming the option when one is unknown."""
    unknown = sorted(set(given) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r}; the options are those of {cls.__name__}")
    return cls(model=model, **given)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True, repr=False)
class VisionOptions(ModelOptions):
    """What the Qwen3-VL embedder and reranker add: how images are read and sized."""

    min_pixels: int = _option(MIN_PIXELS, "Smallest area an image is resized to (the official 4 x 32 x 32: 4 tokens).")
    max_pixels: int = _option(
        MAX_PIXELS,
        "Largest area an image is resized to (the official 1800 x 32 x 32: 1800 tokens); lower it to spend "
        "fewer tokens and less memory per image.",
    )
    allow_urls: bool = _option(
        False,
        "Fetch images given as ``http(s)://`` URLs. Off by default: a URL in untrusted input would make this "
        "process fetch it.",
    )

    def _resolved(self) -> dict[str, Any]:
        values = super()._resolved()
        engine = ENGINES[values["engine"]]
        if engine.vl_module is None:
            raise ValueError(engine.vl_refusal)
        if self.attn_implementation is None:
            values["attn_implementation"] = "sdpa"  # packed batches serve the text models only
        values["min_pixels"] = check_positive_int(self.min_pixels, "min_pixels", minimum=MIN_PIXELS)
        values["max_pixels"] = check_positive_int(self.max_pixels, "max_pixels", minimum=values["min_pixels"])
        values["allow_urls"] = bool(self.allow_urls)
        return values


@dataclass(frozen=True, kw_only=True, repr=False)
class VLEmbedderOptions(VisionOptions, EmbedderOptions):
    """The options of :class:`~qwen3_retrieval.Qwen3VLEmbedder`."""

    kind: ClassVar[str] = "vl-embedding"

    model: str = _option(
        DEFAULT_VL_EMBEDDING_MODEL, "Hub id or local folder of a Qwen3-VL-Embedding checkpoint.", kw_only=False
    )
    instruction: str = _option(
        VL_QUERY_INSTRUCTION,
        "The queries' instruction (the official README's); documents get the official default, \"Represent the "
        "user's input.\". A final '.' is added unless it ends in punctuation, as the official code does.",
    )


@dataclass(frozen=True, kw_only=True, repr=False)
class VLRerankerOptions(VisionOptions, RerankerOptions):
    """The options of :class:`~qwen3_retrieval.Qwen3VLReranker`."""

    kind: ClassVar[str] = "vl-reranker"

    model: str = _option(
        DEFAULT_VL_RERANKER_MODEL, "Hub id or local folder of a Qwen3-VL-Reranker checkpoint.", kw_only=False
    )
    instruction: str = _option(VL_RERANK_INSTRUCTION, "Default task instruction (the official reranker's).")
    max_length: int = _option(
        10240,
        "Longest prompt before its 5 closing tokens, as the official reranker counts it; longer prompts keep "
        "every special token (images are never cut) and lose the end of their text.",
    )
