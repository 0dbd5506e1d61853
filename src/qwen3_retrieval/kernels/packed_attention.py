"""Attention inside each sequence of a packed row: the attention function packed forward passes run.

Consecutive sequences of one length are stacked and go through PyTorch's fused causal attention together, each
after its shared prefix's keys and values, if any. The function is registered with transformers under
:data:`PACKED_ATTENTION`; a model loaded with it runs ordinary (unpacked) calls through transformers' ``sdpa``
function, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

PACKED_ATTENTION = "qwen3_retrieval_packed"


LayerStates = list[tuple[torch.Tensor, torch.Tensor]]
"""Each decoder layer's keys and values of one prefix (one row)."""


class Run(NamedTuple):
    """``sequences`` consecutive sequences of ``length`` tokens from token ``first``, all after prefix ``prefix``."""

    first: int
    length: int
    sequences: int
    prefix: int
    """An index into :attr:`Packing.prefixes`."""


@dataclass(frozen=True)
class Packing:
    """Where each sequence lies in a packed row, and the prefix keys and values each one attends to first."""

    runs: list[Run]
    prefixes: list[LayerStates | None]
    """Per prefix, each layer's keys and values, or None for no prefix."""


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packing: Packing | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each sequence of a packed row (transformers' attention-function signature).

    ``query`` is ``(1, heads, tokens, head_dim)`` and ``key``/``value`` ``(1, kv_heads, tokens, head_dim)``; the
    result is ``(1, tokens, heads, head_dim)``. Calls without ``packing`` go to transformers' ``sdpa`` function.
    """
    if packing is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    queries, keys, values = (states[0].transpose(0, 1) for states in (query, key, value))  # (tokens, heads, dim)
    layer: int = module.layer_idx  # type: ignore[assignment]
    return attend(layer, queries, keys, values, packing, scaling).unsqueeze(0), None


def attend(
    layer: int,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    packing: Packing,
    scaling: float | None,
    *,
    last_only: bool = False,
) -> torch.Tensor:
    """Causal attention inside each sequence of a packed row, for decoder layer number ``layer``.

    ``keys``/``values`` are ``(tokens, kv_heads, head_dim)``. ``queries`` is ``(tokens, heads, head_dim)``, or with
    ``last_only`` ``(sequences, heads, head_dim)``: only each sequence's last token, which attends to all of its
    sequence and prefix. The result has the queries' shape.
    """
    heads, kv_heads, head_dim = queries.shape[1], keys.shape[1], queries.shape[-1]
    out = queries.new_empty(queries.shape)
    done = 0  # sequences in the runs before this one
    for first, length, count, prefix_index in packing.runs:
        layers = packing.prefixes[prefix_index]
        prefix = layers[layer] if layers is not None else None
        span = slice(first, first + length * count)
        # (count, heads, length, head_dim): the run's sequences side by side, a view of the packed row.
        k, v = (states[span].view(count, length, kv_heads, head_dim).transpose(1, 2) for states in (keys, values))
        if last_only:
            q = queries[done : done + count].unsqueeze(2)
        else:
            q = queries[span].view(count, length, heads, head_dim).transpose(1, 2)
        mask = None
        if prefix is not None:
            prefix_keys, prefix_values = prefix
            k = torch.cat([prefix_keys.expand(count, -1, -1, -1), k], dim=2)
            v = torch.cat([prefix_values.expand(count, -1, -1, -1), v], dim=2)
            if not last_only:  # every prefix token, then causal over the sequence's own (diagonal at the right)
                mask = torch.ones((length, k.shape[2]), dtype=torch.bool, device=q.device).tril_(k.shape[2] - length)
        # Grouped-query attention: each key/value head serves heads // kv_heads queries. SDPA shares them in
        # place (enable_gqa) instead of copying every key and value head that many times first.
        attended = torch.nn.functional.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and not last_only,
            scale=scaling,
            enable_gqa=kv_heads != heads,
        )
        if last_only:
            out[done : done + count] = attended[:, :, 0]
        else:
            out[span] = attended.transpose(1, 2).reshape(length * count, heads, head_dim)
        done += count
    return out


def register_packed_attention() -> str:
    """Register :func:`packed_attention` with transformers (idempotent); return the name to load a model with."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # the mask ordinary calls get, as with sdpa
    return PACKED_ATTENTION
