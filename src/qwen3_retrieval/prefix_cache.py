"""Reranking with the shared prompt prefix computed once per call.

Every candidate of one query starts with the same tokens (system prompt, instruction, query). Their keys and
values are computed once; each batch of candidates then runs only its own tokens (document and suffix) on top
of that cache. Documents are right-padded after the prefix and each row's last real token is gathered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import run_in_batches
from qwen3_retrieval.devices import BatchPolicy
from qwen3_retrieval.pooling import right_pad, take_positions


@torch.inference_mode()
def last_hidden_after_prefix(
    backbone: torch.nn.Module,
    prefix: Sequence[int],
    tails: Sequence[Sequence[int]],
    *,
    pad_id: int,
    policy: BatchPolicy,
    device: torch.device,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Return the last-token state of each ``prefix + tail``, in input order, running ``prefix`` once."""
    from transformers import DynamicCache

    n_prefix = len(prefix)
    cached = backbone(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True).past_key_values
    layers = [(layer.keys, layer.values) for layer in cached.layers]

    def run(batch: list[int]) -> torch.Tensor:
        rows = [tails[i] for i in batch]
        input_ids, last = right_pad(rows, pad_id)
        width = input_ids.shape[1]
        attention_mask = None  # right padding needs none: causal attention never looks ahead to the pads
        if policy.padding_side == "left":  # devices whose kernels skip masked pads get the mask anyway
            attention_mask = (torch.arange(n_prefix + width) <= n_prefix + last[:, None]).long().to(device)
        positions = torch.arange(n_prefix, n_prefix + width).expand(len(rows), -1)
        # expand() is a view: each layer's first update concatenates, so the shared prefix is never written to.
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in layers],
            config=backbone.config,  # type: ignore[arg-type]
        )
        hidden = backbone(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask,
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        return take_positions(hidden, last)

    lengths = [len(t) for t in tails]
    return run_in_batches(
        lengths, policy.batch_tokens, run, max_padding=policy.max_padding, device=device, progress=progress
    )
