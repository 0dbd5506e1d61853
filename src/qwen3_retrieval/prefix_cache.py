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


@torch.inference_mode()
def last_hidden_after_prefix(
    backbone: torch.nn.Module,
    prefix: Sequence[int],
    tails: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_tokens: int,
    device: torch.device,
    pad: bool = True,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Return the last-token state of each ``prefix + tail``, in input order, running ``prefix`` once."""
    from transformers import DynamicCache

    n_prefix = len(prefix)
    cached = backbone(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True).past_key_values
    layers = [(layer.keys, layer.values) for layer in cached.layers]

    def run(batch: list[int]) -> torch.Tensor:
        rows = [tails[i] for i in batch]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), n_prefix + width), dtype=torch.long)
        attention_mask[:, :n_prefix] = 1
        for r, seq in enumerate(rows):
            input_ids[r, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[r, n_prefix : n_prefix + len(seq)] = 1
        positions = torch.arange(n_prefix, n_prefix + width).expand(len(rows), -1)
        # expand() is a view: each layer's first update concatenates, so the shared prefix is never written to.
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in layers],
            config=backbone.config,  # type: ignore[arg-type]
        )
        hidden = backbone(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        return hidden[torch.arange(len(rows), device=device), last]

    return run_in_batches([len(t) for t in tails], batch_tokens, run, pad=pad, device=device, progress=progress)
