"""Packed (varlen) forward passes: a batch's sequences laid end to end in one row, no padding at all.

This is how vLLM and TEI run a batch, and the default here on every device. Each sequence keeps its own
positions (from 0, or from the end of a shared prefix), and attention stays inside each sequence: consecutive
sequences of one length are stacked and go through PyTorch's fused causal attention together. So the matrix
multiplies see every real token and nothing else, however different the lengths are, and the batch budget only
bounds memory. Results equal a one-at-a-time run to float rounding (the reference tests run on this path).

The attention function is registered with transformers under :data:`PACKED_ATTENTION`; a model loaded with it
runs ordinary (unpacked) calls through transformers' ``sdpa`` function, unchanged. A float32 Qwen3 model on a CPU
runs its packed rows through :mod:`qwen3_retrieval.packed_decoder` instead of transformers' forward.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import torch
from tqdm.auto import tqdm

from qwen3_retrieval import packed_decoder
from qwen3_retrieval.batching import run_in_batches, token_budget_batches
from qwen3_retrieval.kv_cache import prefix_states

PACKED_ATTENTION = "qwen3_retrieval_packed"


@dataclass(frozen=True)
class _Packing:
    """Where each sequence lies in a packed row, and the prefix keys and values each one attends to first."""

    runs: list[tuple[int, int, int, int]]
    """(first token, length, count, prefix): ``count`` consecutive sequences of ``length`` tokens from ``first
    token``, all after prefix number ``prefix`` (an index into :attr:`prefixes`)."""
    prefixes: list[list[tuple[torch.Tensor, torch.Tensor]] | None]
    """Per prefix, each layer's keys and values (one row), or None for no prefix."""


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packing: _Packing | None = None,
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
    packing: _Packing,
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
            q, k, v, attn_mask=mask, is_causal=mask is None and not last_only, scale=scaling,
            enable_gqa=kv_heads != heads,
        )  # fmt: skip
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


PromptGroup = tuple[Sequence[int], Sequence[Sequence[int]]]
"""A shared prefix (possibly empty) and the sequences that follow it."""


@torch.inference_mode()
def last_hidden_packed(
    backbone: torch.nn.Module,
    groups: Sequence[PromptGroup],
    *,
    batch_tokens: int,
    device: torch.device,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Return the last-token state of each ``prefix + sequence``, group after group, in input order.

    Embedding passes one group with an empty prefix. Reranking passes one group per query, its prefix the system
    prompt, instruction and query: a prefix runs once, and its keys and values are kept as one row that every
    sequence of the group attends to, only while batches of that group run.

    A batch holds at most ``batch_tokens`` tokens counting ``prefix + sequence`` per sequence (at least one
    sequence per batch), so memory follows the budget and the longest single input, whatever the number of
    inputs or groups. A sequence itself longer than the whole budget runs alone, prefix included, as one sequence.
    """
    rows = [(g, i) for g, (_, sequences) in enumerate(groups) for i in range(len(sequences))]
    sizes = [len(groups[g][0]) + len(groups[g][1][i]) for g, i in rows]
    states: dict[int, list[tuple[torch.Tensor, torch.Tensor]] | None] = {}
    remaining = Counter(g for g, _ in rows)

    def run(batch: list[int]) -> torch.Tensor:
        members = [rows[n] for n in batch]
        if len(batch) == 1 and len(groups[members[0][0]][1][members[0][1]]) > batch_tokens:
            # A sequence longer than the whole budget would need a (sequence x prompt) attention mask against
            # its prefix: run the whole prompt as one plain causal sequence instead, as the embedder would.
            g, i = members[0]
            hidden = _forward(backbone, [[*groups[g][0], *groups[g][1][i]]], [g], {g: (0, None)}, device)
        else:
            for g in {g for g, _ in members} - states.keys():
                states[g] = prefix_states(backbone, groups[g][0], device) if groups[g][0] else None
            prefixes = {g: (len(groups[g][0]), states[g]) for g, _ in members}
            hidden = _forward(
                backbone, [groups[g][1][i] for g, i in members], [g for g, _ in members], prefixes, device
            )
        remaining.subtract(g for g, _ in members)
        for g in [g for g in states if remaining[g] == 0]:
            del states[g]  # this group's prefix is done: free its keys and values now
        return hidden

    # Group by group (at most a few prefixes alive at a time), longest first within one (equal lengths adjacent:
    # attention takes them together).
    batches = token_budget_batches(sizes, batch_tokens, packed=True, groups=[g for g, _ in rows])
    return run_in_batches(batches, run, device=device, progress=progress)


def _forward(
    backbone: torch.nn.Module,
    sequences: list[Sequence[int]],
    groups: list[int],
    prefixes: dict[int, tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]],
    device: torch.device,
) -> torch.Tensor:
    """Run ``sequences`` as one packed row; return each one's last-token state.

    ``groups`` names each sequence's group; ``prefixes`` gives a group's prefix length (where its positions
    start) and the prefix's per-layer keys and values (None: no prefix).
    """
    lengths = [len(s) for s in sequences]
    order = list(prefixes)  # the prefix number a run refers to
    runs, first = [], 0
    for (length, g), same in groupby(zip(lengths, groups, strict=True)):
        count = len(list(same))
        runs.append((first, length, count, order.index(g)))
        first += length * count
    layers = [prefixes[g][1] for g in order]
    input_ids = torch.tensor([[token for s in sequences for token in s]], device=device)
    positions = torch.cat(
        [torch.arange(prefixes[g][0], prefixes[g][0] + n) for g, n in zip(groups, lengths, strict=True)]
    )
    positions = positions.to(device)
    last = torch.tensor(lengths, device=device).cumsum(0) - 1
    if packed_decoder.supports(backbone):
        return packed_decoder.last_states(backbone, input_ids[0], positions, _Packing(runs, layers), last)
    hidden = backbone(
        input_ids=input_ids,
        position_ids=positions.unsqueeze(0),
        attention_mask={"full_attention": None, "sliding_attention": None},  # attention is by sequence: no mask
        use_cache=False,
        packing=_Packing(runs, layers),
    ).last_hidden_state
    return hidden[0, last]
