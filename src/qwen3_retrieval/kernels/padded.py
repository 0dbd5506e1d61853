"""Padded forward passes, for a caller-named attention kernel: each sequence's last-token state, in bounded memory.

The memory rule, for the embedder and the reranker alike: one forward pass holds at most ``batch_tokens``
tokens, counted over whole sequences (rows x longest, the reranker's shared prompt prefix included), and no
layer's keys and values outlive that layer. Sequences longer than the budget run alone. So peak memory follows
the budget and the longest single input, never the number of inputs or (rows x prefix length).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicLayer

from qwen3_retrieval.batching import BatchPolicy, run_in_batches, token_budget_batches
from qwen3_retrieval.kernels.kv_cache import cache_argument, prefix_states
from qwen3_retrieval.kernels.pooling import last_token_pool, left_pad, right_pad, take_positions


@torch.inference_mode()
def last_hidden_padded(
    backbone: torch.nn.Module,
    prefix: Sequence[int],
    tails: Sequence[Sequence[int]],
    *,
    pad_id: int,
    policy: BatchPolicy,
    device: torch.device,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Return the last-token state of each ``prefix + tail``, in input order, in padded token-budget batches.

    Without a prefix (embedding) each tail is a whole sequence. With one (reranking: every prompt of one query
    starts with the same system prompt, instruction and query), the prefix's keys and values are computed once
    and kept as a single row. Each batch of tails then runs only its own tokens; a layer sees the prefix as a
    broadcast view of that row, and the joined keys and values it attends over are freed as soon as the layer
    is done (see :class:`_SharedPrefixLayer`).

    A batch counts ``prefix + tail`` per row against ``policy.batch_tokens`` (at least one row per batch). A tail
    longer than the budget runs alone and in full, without the prefix cache, exactly as the embedder would run
    it: its attention then needs no mask, so a 32k-token document costs what embedding it costs.
    """
    if not prefix:
        return _in_batches(tails, lambda rows: _whole(backbone, rows, pad_id, policy, device), policy, device, progress)
    # A tail longer than the whole budget would need a (tail x prompt) attention mask; run it as the embedder
    # runs a long text instead: alone, in full, mask-free.
    full = [i for i, tail in enumerate(tails) if len(tail) > policy.batch_tokens]
    shared = [i for i, tail in enumerate(tails) if len(tail) <= policy.batch_tokens]
    out = torch.empty(0)
    if full:
        whole = [[*prefix, *tails[i]] for i in full]
        hidden = _in_batches(whole, lambda rows: _whole(backbone, rows, pad_id, policy, device), policy, device)
        out = _scatter(out, full, hidden, len(tails))
    if shared:
        layers = prefix_states(backbone, prefix, device)
        rows = [tails[i] for i in shared]

        def run(batch: list[Sequence[int]]) -> torch.Tensor:
            return _after_prefix(backbone, len(prefix), layers, batch, pad_id, policy, device)

        hidden = _in_batches(rows, run, policy, device, offset=len(prefix))
        out = _scatter(out, shared, hidden, len(tails))
    if progress is not None:
        progress.update(len(tails))
        progress.close()
    return out


def _in_batches(
    rows: Sequence[Sequence[int]],
    run: Callable[[list[Sequence[int]]], torch.Tensor],
    policy: BatchPolicy,
    device: torch.device,
    progress: tqdm | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """``run`` over token-budget batches of ``rows`` (each counted ``offset`` tokens longer), in input order."""
    batches = token_budget_batches([offset + len(r) for r in rows], policy.batch_tokens, max_padding=policy.max_padding)
    return run_in_batches(batches, lambda batch: run([rows[i] for i in batch]), device=device, progress=progress)


def _whole(
    backbone: torch.nn.Module, rows: list[Sequence[int]], pad_id: int, policy: BatchPolicy, device: torch.device
) -> torch.Tensor:
    """Run whole sequences as one padded batch; return each one's last-token state."""
    if policy.layout == "right":
        input_ids, last = right_pad(rows, pad_id)
        # No mask: pads come after every real token, and causal attention never looks ahead.
        hidden = backbone(input_ids=input_ids.to(device), use_cache=False).last_hidden_state
        return take_positions(hidden, last)
    input_ids, attention_mask, position_ids = left_pad(rows, pad_id)
    hidden = backbone(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,  # nothing reads the keys and values afterwards: keep none of them
    ).last_hidden_state
    return last_token_pool(hidden, attention_mask.to(device))


def _after_prefix(
    backbone: torch.nn.Module,
    n_prefix: int,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    rows: list[Sequence[int]],
    pad_id: int,
    policy: BatchPolicy,
    device: torch.device,
) -> torch.Tensor:
    """Run one padded batch of tails on top of a prefix's keys and values; return each one's last-token state."""
    input_ids, last = right_pad(rows, pad_id)
    width = input_ids.shape[1]
    attention_mask = None  # right padding needs none: causal attention never looks ahead to the pads
    if policy.layout == "left":  # devices whose kernels skip masked pads get the mask anyway
        attention_mask = (torch.arange(n_prefix + width) <= n_prefix + last[:, None]).long().to(device)
    positions = torch.arange(n_prefix, n_prefix + width).expand(len(rows), -1)
    cache = Cache(layers=[_SharedPrefixLayer(keys, values) for keys, values in layers])
    hidden = backbone(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask,
        position_ids=positions.to(device),
        use_cache=True,
        **cache_argument(backbone, cache),
    ).last_hidden_state
    return take_positions(hidden, last)


def _scatter(out: torch.Tensor, indices: list[int], rows: torch.Tensor, total: int) -> torch.Tensor:
    if not out.numel():
        out = torch.empty((total, rows.shape[1]), dtype=rows.dtype, device=rows.device)
    out[torch.as_tensor(indices, device=rows.device)] = rows
    return out


class _SharedPrefixLayer(DynamicLayer):
    """One layer's cache: a one-row prefix that every row of a batch attends to; nothing new is stored.

    ``update`` hands attention the prefix (broadcast to the batch) joined with the batch's own keys and values,
    and keeps only the prefix, so the joined tensors are freed when this layer's attention is done instead of
    piling up for every layer until the forward pass ends.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.keys is not None and self.values is not None
        rows = key_states.shape[0]
        keys = torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2)
        return keys, values
