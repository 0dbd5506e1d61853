"""The element-wise work between a decoder layer's matrix multiplies and attention, as three regions.

:mod:`qwen3_retrieval.kernels.packed_decoder` runs a layer as: the q/k/v projections, :attr:`Regions.norm_rotary`
on the queries and keys, attention, the output projection, :attr:`Regions.add_norm` (residual and the MLP's
norm), the gate and up projections, :attr:`Regions.silu_mul`, the down projection, and :attr:`Regions.add_norm`
again (residual and the next layer's norm). The projections and attention stay outside the regions: oneDNN's
packed weights already run the multiplies at the machine's limit, and attention is its own kernel.

Each region has an eager form and a compiled one (:mod:`qwen3_retrieval.kernels.compiled`), which computes the
same function in one loop over the data instead of a pass per operation. The pure functions below are what gets
compiled; they are written as transformers' Qwen3 layers compute (RMSNorm in float32, its result rounded to the
model's dtype before the weight multiply, then rotary on the rounded values), so in bfloat16 the compiled regions
round where transformers does, and in float32 both equal transformers' layer to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


class Regions(NamedTuple):
    """The three element-wise regions of a decoder layer (all of one dtype and shape)."""

    norm_rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    """``(x, weight, cos, sin)``: RMSNorm over each head of ``x`` (``(tokens, heads, head_dim)``), then rotary
    with ``cos``/``sin`` (``(tokens, 1, head_dim)``)."""
    add_norm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    """``(hidden, delta, weight)``: the residual sum ``hidden + delta`` (``(tokens, hidden)``) and its RMSNorm.
    The eager form may add in place into ``hidden``: callers use only what it returns."""
    silu_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """``(gate, up)``: ``silu(gate) * up``. The eager form may write into ``gate``."""


# --- the pure functions: what is compiled, and the eager form in bfloat16 ------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMSNorm of transformers' ``Qwen3RMSNorm``: in float32, rounded to ``x``'s dtype, then times the weight."""
    dtype = x.dtype
    wide = x.to(torch.float32)
    wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * wide.to(dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary as transformers' ``apply_rotary_pos_emb`` does it to one tensor: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def pure_regions(eps: float) -> Regions:
    """The regions as plain torch operations (transformers' order and rounding), with the models' ``eps``."""

    def norm_rotary(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rotary(rms_norm(x, weight, eps), cos, sin)

    def add_norm(hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = hidden + delta
        return total, rms_norm(total, weight, eps)

    def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(gate) * up

    return Regions(norm_rotary, add_norm, silu_mul)


# --- the eager float32 form: the same results in fewer passes, in place where it can -----------------------


def fast_float32_regions(eps: float) -> Regions:
    """float32 regions without a compiler: torch's one-pass ``rms_norm``, rotary in three passes, in place.

    In float32 ``F.rms_norm`` equals transformers' five-pass RMSNorm (there is no rounding step between), and
    ``rotate_half`` is ``cat(-second_half, first_half)``, so the first half gets ``- second * sin`` and the second
    half ``+ first * sin``, each added in place into ``x * cos``.
    """

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)

    def norm_rotary(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        states = norm(x, weight)
        half = states.shape[-1] // 2
        out = states * cos
        out[..., :half].addcmul_(states[..., half:], sin[..., :half], value=-1)
        out[..., half:].addcmul_(states[..., :half], sin[..., half:])
        return out

    def add_norm(hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden += delta
        return hidden, norm(hidden, weight)

    def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(gate, inplace=True).mul_(up)

    return Regions(norm_rotary, add_norm, silu_mul)


def eager_regions(dtype: torch.dtype, eps: float) -> Regions:
    """The regions a model of ``dtype`` runs before (or without) its compiled ones."""
    return fast_float32_regions(eps) if dtype == torch.float32 else pure_regions(eps)
