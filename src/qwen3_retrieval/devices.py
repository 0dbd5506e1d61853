"""Device and dtype resolution: what ``device=None`` and ``dtype=None`` mean."""

from __future__ import annotations

import functools
import hashlib
import platform

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


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (torch's own check; False on torch releases without it)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


@functools.cache
def cpu_fingerprint() -> str:
    """A short digest of this CPU's model and feature flags: code built for it (``-march=native``) runs here.

    Linux reads them from ``/proc/cpuinfo``; elsewhere the processor's name stands in for them.
    """
    described = f"{platform.machine()}|{platform.processor()}"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            wanted = ("model name", "flags", "Features", "CPU part")  # x86 and Arm spell them differently
            lines = sorted({line.strip() for line in info if line.split(":")[0].strip() in wanted})
        described += "|" + "|".join(lines)
    except OSError:
        pass
    return hashlib.sha256(described.encode()).hexdigest()[:12]
