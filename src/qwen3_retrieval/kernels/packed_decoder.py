"""A Qwen3 decoder's packed forward pass written out, for a CPU: the same layers, less memory traffic.

On a CPU the passes between the matrix multiplies are bound by memory, not arithmetic, and they take a share of a
round worth saving (docs/design-notes.md has the figures; in bfloat16, where the multiplies run on the matrix
units, most of it). This forward runs the model's own linear layers and rotary table in the same order, with the
element-wise work between them as three regions (:mod:`qwen3_retrieval.kernels.regions`): eager ones, or the same
functions compiled into one loop each (:mod:`qwen3_retrieval.kernels.compiled`) once they are ready. In the last
layer only each sequence's last token goes on past the keys and values: it is the only state the embedder and the
reranker read, so its queries, attention output, MLP and final norm run on one row per sequence instead of every
token (about 1/28 of the 0.6B model's work).

The results equal transformers' layer to float32 rounding (the reference tests run on this path, eager and
compiled); in bfloat16 the regions round where transformers' layer does. It is used for float32 and bfloat16
``Qwen3Model`` backbones on a CPU with the default rotary embedding and no sliding window; every other model keeps
transformers' forward (:func:`supports`).
"""

from __future__ import annotations

from typing import Any

import torch

from qwen3_retrieval.kernels.packed_attention import Packing, attend
from qwen3_retrieval.kernels.regions import Regions, eager_regions


def supports(backbone: torch.nn.Module) -> bool:
    """Whether :func:`last_states` runs ``backbone`` (else the caller uses transformers' forward)."""
    config = getattr(backbone, "config", None)
    weight = getattr(getattr(backbone, "embed_tokens", None), "weight", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return (
        type(backbone).__name__ == "Qwen3Model"
        and isinstance(weight, torch.Tensor)
        and weight.dtype in (torch.float32, torch.bfloat16)
        and weight.device.type == "cpu"
        and getattr(config, "hidden_act", None) == "silu"
        and rope.get("rope_type", rope.get("type", "default")) == "default"
        and not getattr(config, "use_sliding_window", False)
        and all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"])
    )


def last_states(
    backbone: Any,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    packing: Packing,
    last: torch.Tensor,
    regions: Regions | None = None,
) -> torch.Tensor:
    """Each sequence's last-token final state (``(sequences, hidden)``) of one packed row.

    Args:
        backbone: a ``Qwen3Model`` that :func:`supports`.
        input_ids: the packed row's token ids, ``(tokens,)``.
        positions: each token's position in its own prompt, ``(tokens,)``.
        packing: where the sequences lie in the row, and the prefix keys and values they attend to.
        last: the row index of each sequence's last token, ``(sequences,)``.
        regions: the element-wise work between the multiplies (compiled or not); None: the eager ones.
    """
    config = backbone.config
    if regions is None:
        regions = eager_regions(backbone.embed_tokens.weight.dtype, config.rms_norm_eps)
    hidden = backbone.embed_tokens(input_ids)
    cos, sin = (table[0].unsqueeze(1) for table in backbone.rotary_emb(hidden, positions.unsqueeze(0)))
    layers = backbone.layers[: config.num_hidden_layers]
    states = layers[0].input_layernorm(hidden)
    for number, layer in enumerate(layers):
        attention = layer.self_attn
        heads, head_dim = attention.config.num_attention_heads, attention.head_dim
        keys = attention.k_proj(states).unflatten(-1, (-1, head_dim))
        keys = regions.norm_rotary(keys, attention.k_norm.weight, cos, sin)
        values = attention.v_proj(states).unflatten(-1, (-1, head_dim))
        final = number == len(layers) - 1
        if final:  # from here on only the last tokens: the keys and values above still cover every token
            hidden, states, cos, sin = hidden[last], states[last], cos[last], sin[last]
        queries = attention.q_proj(states).unflatten(-1, (heads, head_dim))
        queries = regions.norm_rotary(queries, attention.q_norm.weight, cos, sin)
        attended = attend(attention.layer_idx, queries, keys, values, packing, attention.scaling, last_only=final)
        delta = attention.o_proj(attended.flatten(-2))
        hidden, states = regions.add_norm(hidden, delta, layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        delta = mlp.down_proj(regions.silu_mul(mlp.gate_proj(states), mlp.up_proj(states)))
        after = backbone.norm if final else layers[number + 1].input_layernorm
        hidden, states = regions.add_norm(hidden, delta, after.weight)
    return states
