"""Device and dtype resolution: what ``device=None`` and ``dtype=None`` mean."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_VALID_DTYPES = "None or 'auto', 'float32', 'bfloat16', 'float16' (or the torch dtypes)"
_VALID_DEVICES = "None or 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the device to run on: CUDA, then MPS, then CPU when ``device`` is None or ``"auto"``."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use {_VALID_DEVICES}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use 'cpu' or None")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for but MPS is not available here; use 'cpu' or None")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use {_VALID_DEVICES}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Return the weight dtype: bfloat16 on GPUs that support it, float32 otherwise, unless one is given.

    float16 is allowed when asked for, but never chosen: Qwen3-Embedding-8B overflows to NaN in fp16.
    """
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPE_NAMES.values():
            return dtype
        raise ValueError(f"unsupported dtype {dtype}; use {_VALID_DTYPES}")
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use {_VALID_DTYPES}")


@dataclass(frozen=True)
class BatchPolicy:
    """How sequences are grouped and laid out on one device."""

    batch_tokens: int
    """Token budget of one batch: its real tokens when packed, rows x longest when padded."""
    max_padding: float
    """Padded layouts: the largest share of a batch's padded size that may be pad tokens."""
    layout: Literal["packed", "left", "right"]
    """``"packed"`` (the default): a batch's sequences end to end in one row, attention inside each (see
    :mod:`qwen3_retrieval.packing`). Padded layouts serve an ``attn_implementation`` the caller names:
    ``"left"``, pads first behind an attention mask (what transformers' kernels expect on GPU); ``"right"``, pads
    last and no mask, since causal attention already keeps every real token from seeing them."""
    share_prefix: bool = True
    """Reranking: run the prompt part every document of a query shares once per call, each document on top."""
    micro_batch: bool = True
    """Concurrent callers: merge calls into shared runs on one worker (see :mod:`qwen3_retrieval.microbatch`);
    False runs each call alone in its caller's thread."""
    batch_wait_s: float = 0.002
    """How long a merged run waits for more calls while calls are streaming in; a lone caller never waits."""


def batch_policy(device: torch.device, *, packed: bool = True) -> BatchPolicy:
    """Return the batching policy for ``device``: packed, or padded for a caller-named attention kernel.

    Packed batches hold no padding, so their budget only bounds memory and how much work one call shares.
    CPU (2 threads, real 0.6B shape, the benchmark's 16 texts, interleaved runs): budgets of 512 to 4096 tokens
    all timed within this machine's run-to-run noise (about 13-15 s); 1024 keeps activations small. GPUs need
    large batches to fill the device.
    """
    if device.type in ("cuda", "mps"):
        budget = 16384 if device.type == "cuda" else 8192
        return BatchPolicy(batch_tokens=budget, max_padding=1.0, layout="packed" if packed else "left")
    if packed:
        return BatchPolicy(batch_tokens=CPU_PACKED_BATCH_TOKENS, max_padding=1.0, layout="packed")
    # Padded on CPU: a mask takes attention off the fused causal kernel (twice as slow), right pads cost only
    # themselves, and small groups of similar lengths did best (budget 512 with up to 25% pads).
    return BatchPolicy(batch_tokens=512, max_padding=0.25, layout="right")


CPU_PACKED_BATCH_TOKENS = 1024
