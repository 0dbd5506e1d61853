"""Faster equivalents of transformers' own layers, put in place on a loaded model where they are exact.

Qwen3 normalises every query and key head (``q_norm``/``k_norm``) with transformers' RMSNorm, written as five
element-wise passes whose mean runs over only 128 values a head. On a CPU in float32 that took about 5 ms for
one 1024-token batch of query heads in one layer, against 0.5 ms for torch's own ``rms_norm`` (AMD EPYC, 2
threads), with identical results. In bfloat16 transformers rounds the normalised values before the weight
multiply, which ``rms_norm`` does not, so bfloat16 models keep transformers' layer.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def _rms_norm(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)


def fuse_rms_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Run every float32 RMSNorm of ``model`` through ``torch.nn.functional.rms_norm``; return ``model``."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            type(module).__name__.endswith("RMSNorm")
            and isinstance(weight, torch.Tensor)
            and weight.dtype == torch.float32
            and isinstance(getattr(module, "variance_epsilon", None), float)
        ):
            module.forward = types.MethodType(_rms_norm, module)
    return model
