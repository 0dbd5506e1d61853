"""A Qwen3 decoder's packed forward pass written out, for float32 on a CPU: the same layers, less memory traffic.

On a CPU the passes between the matrix multiplies are bound by memory, not arithmetic, and they take a share of a
round worth saving (docs/design-notes.md has the figures). transformers' layer writes rotary embeddings as
five whole-tensor passes over the queries and keys (``q * cos``, a negation, a concatenation, ``* sin``, the sum)
and allocates a new tensor for each step of the MLP and both residual additions. This forward runs the model's own
modules (its linear layers, norms and rotary table) in the same order, with:

- rotary as one multiply and two half-width multiply-adds, into one new tensor;
- the MLP's SiLU and product, and both residual additions, in place;
- in the last layer, only each sequence's last token past the keys and values: it is the only state the
  embedder and the reranker read, so its queries, attention output, MLP and final norm run on one row per
  sequence instead of every token (about 1/28 of the 0.6B model's work).

The results equal transformers' layer to float32 rounding (the reference tests run on this path). It is used
only where it was measured to help: a float32 ``Qwen3Model`` on a CPU with the default rotary embedding and no
sliding window. In bfloat16 it measured no gain, so bfloat16 models keep transformers' layer, and with it
transformers' rounding; so does every other model (:func:`supports`).
"""

from __future__ import annotations

from typing import Any

import torch

from qwen3_retrieval.kernels.packed_attention import Packing, attend


def supports(backbone: torch.nn.Module) -> bool:
    """Whether :func:`last_states` runs ``backbone`` (else the caller uses transformers' forward)."""
    config = getattr(backbone, "config", None)
    weight = getattr(getattr(backbone, "embed_tokens", None), "weight", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return (
        type(backbone).__name__ == "Qwen3Model"
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and getattr(config, "hidden_act", None) == "silu"
        and rope.get("rope_type", rope.get("type", "default")) == "default"
        and not getattr(config, "use_sliding_window", False)
        and all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"])
    )


def last_states(
    backbone: Any, input_ids: torch.Tensor, positions: torch.Tensor, packing: Packing, last: torch.Tensor
) -> torch.Tensor:
    """Each sequence's last-token final state (``(sequences, hidden)``) of one packed row.

    Args:
        backbone: a ``Qwen3Model`` that :func:`supports`.
        input_ids: the packed row's token ids, ``(tokens,)``.
        positions: each token's position in its own prompt, ``(tokens,)``.
        packing: where the sequences lie in the row, and the prefix keys and values they attend to.
        last: the row index of each sequence's last token, ``(sequences,)``.
    """
    hidden = backbone.embed_tokens(input_ids)
    cos, sin = (table[0].unsqueeze(1) for table in backbone.rotary_emb(hidden, positions.unsqueeze(0)))
    layers = backbone.layers[: backbone.config.num_hidden_layers]
    for number, layer in enumerate(layers):
        attention = layer.self_attn
        heads, head_dim = attention.config.num_attention_heads, attention.head_dim
        states = layer.input_layernorm(hidden)
        keys = _rotated(attention.k_norm(attention.k_proj(states).unflatten(-1, (-1, head_dim))), cos, sin)
        values = attention.v_proj(states).unflatten(-1, (-1, head_dim))
        final = number == len(layers) - 1
        if final:  # from here on only the last tokens: the keys and values above still cover every token
            hidden, states, rows = hidden[last], states[last], last
        else:
            rows = None
        queries = attention.q_norm(attention.q_proj(states).unflatten(-1, (heads, head_dim)))
        queries = _rotated(queries, cos if rows is None else cos[rows], sin if rows is None else sin[rows])
        attended = attend(attention.layer_idx, queries, keys, values, packing, attention.scaling, last_only=final)
        hidden += attention.o_proj(attended.flatten(-2))
        hidden += _mlp(layer.mlp, layer.post_attention_layernorm(hidden))
    return backbone.norm(hidden)


def _rotated(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``states * cos + rotate_half(states) * sin`` (transformers' rotary) in three passes instead of five.

    ``states`` is ``(tokens, heads, head_dim)``; ``cos`` and ``sin`` are ``(tokens, 1, head_dim)``.
    ``rotate_half`` is ``cat(-second_half, first_half)``, so the first half gets ``- second * sin`` and the second
    half ``+ first * sin``, each added in place.
    """
    half = states.shape[-1] // 2
    out = states * cos
    out[..., :half].addcmul_(states[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(states[..., :half], sin[..., half:])
    return out


def _mlp(mlp: Any, states: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))`` with the SiLU and the product in place."""
    gate = mlp.gate_proj(states)
    torch.nn.functional.silu(gate, inplace=True)
    return mlp.down_proj(gate.mul_(mlp.up_proj(states)))
