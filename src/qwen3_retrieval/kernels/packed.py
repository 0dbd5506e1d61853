"""Packed (varlen) forward passes: a batch's sequences laid end to end in one row, no padding at all.

This is how vLLM and TEI run a batch, and the default here on every device. Each sequence keeps its own
positions (from 0, or from the end of a shared prefix), and attention stays inside each sequence: on CUDA GPUs in
bfloat16 one FlashAttention call per layer over sequence offsets, elsewhere consecutive sequences of one length
stacked through PyTorch's fused causal attention together (``packed_attention`` chooses). So the matrix
multiplies see every real token and nothing else, however different the lengths are, and the batch budget only
bounds memory. Results equal a one-at-a-time run to float rounding (the reference tests run on this path).

Attention is :mod:`qwen3_retrieval.kernels.packed_attention`'s. A float32 or bfloat16 Qwen3 model on a CPU runs
its packed rows through :mod:`qwen3_retrieval.kernels.packed_decoder` instead of transformers' forward.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import groupby
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import run_in_batches, token_budget_batches
from qwen3_retrieval.kernels import packed_attention, packed_decoder
from qwen3_retrieval.kernels.kv_cache import prefix_states
from qwen3_retrieval.kernels.packed_attention import LayerStates, Packing, Run
from qwen3_retrieval.kernels.regions import Regions


class PromptGroup(NamedTuple):
    """A shared prefix (possibly empty) and the sequences that follow it."""

    prefix: Sequence[int]
    sequences: Sequence[Sequence[int]]


class Member(NamedTuple):
    """One sequence of a call: its group, and its place among the group's sequences."""

    group: int
    position: int


@torch.inference_mode()
def last_hidden_packed(
    backbone: torch.nn.Module,
    groups: Sequence[PromptGroup],
    *,
    batch_tokens: int,
    device: torch.device,
    progress: tqdm | None = None,
    regions: Regions | None = None,
) -> torch.Tensor:
    """Return the last-token state of each ``prefix + sequence``, group after group, in input order.

    Embedding passes one group with an empty prefix. Reranking passes one group per query, its prefix the system
    prompt, instruction and query: a prefix runs once, and its keys and values are kept as one row that every
    sequence of the group attends to, only while batches of that group run.

    A batch holds at most ``batch_tokens`` tokens counting ``prefix + sequence`` per sequence (at least one
    sequence per batch), so memory follows the budget and the longest single input, whatever the number of
    inputs or groups. A sequence itself longer than the whole budget runs alone, prefix included, as one sequence.
    ``regions`` is the element-wise work :mod:`~qwen3_retrieval.kernels.packed_decoder` runs (None: eager).
    """
    groups = [PromptGroup(*group) for group in groups]
    rows = [Member(g, i) for g, group in enumerate(groups) for i in range(len(group.sequences))]
    sizes = [len(groups[row.group].prefix) + len(groups[row.group].sequences[row.position]) for row in rows]
    states: dict[int, LayerStates | None] = {}
    remaining = Counter(row.group for row in rows)

    def run(batch: list[int]) -> torch.Tensor:
        members = [rows[n] for n in batch]
        lone = members[0]
        if len(batch) == 1 and len(groups[lone.group].sequences[lone.position]) > batch_tokens:
            # A sequence longer than the whole budget would need a (sequence x prompt) attention mask against
            # its prefix: run the whole prompt as one plain causal sequence instead, as the embedder would.
            whole = [*groups[lone.group].prefix, *groups[lone.group].sequences[lone.position]]
            hidden = _forward(backbone, [whole], [lone.group], {lone.group: (0, None)}, device, regions)
        else:
            for g in {m.group for m in members} - states.keys():
                prefix = groups[g].prefix
                states[g] = prefix_states(backbone, prefix, device) if prefix else None
            prefixes = {m.group: (len(groups[m.group].prefix), states[m.group]) for m in members}
            sequences = [groups[m.group].sequences[m.position] for m in members]
            hidden = _forward(backbone, sequences, [m.group for m in members], prefixes, device, regions)
        remaining.subtract(m.group for m in members)
        for g in [g for g in states if remaining[g] == 0]:
            del states[g]  # this group's prefix is done: free its keys and values now
        return hidden

    # Group by group (at most a few prefixes alive at a time), longest first within one (equal lengths adjacent:
    # attention takes them together).
    batches = token_budget_batches(sizes, batch_tokens, packed=True, groups=[row.group for row in rows])
    return run_in_batches(batches, run, device=device, progress=progress)


def _forward(
    backbone: torch.nn.Module,
    sequences: list[Sequence[int]],
    groups: list[int],
    prefixes: dict[int, tuple[int, LayerStates | None]],
    device: torch.device,
    regions: Regions | None,
) -> torch.Tensor:
    """Run ``sequences`` as one packed row; return each one's last-token state.

    ``groups`` names each sequence's group; ``prefixes`` gives a group's prefix length (where its positions
    start) and the prefix's per-layer keys and values (None: no prefix).
    """
    lengths = [len(s) for s in sequences]
    order = list(prefixes)  # the prefix number a run refers to
    runs: list[Run] = []
    first = 0
    for (length, g), same in groupby(zip(lengths, groups, strict=True)):
        count = len(list(same))
        runs.append(Run(first, length, count, order.index(g)))
        first += length * count
    states = [prefixes[g][1] for g in order]
    varlen = None
    if packed_attention.kernel_for(device, getattr(backbone, "dtype", torch.float32)) == "varlen":
        # Once per forward pass, for every layer: the offsets are on the device before the first layer runs.
        lengths_of = [prefixes[g][0] if prefixes[g][1] is not None else 0 for g in order]
        varlen = packed_attention.varlen_offsets(runs, lengths_of, device)
    packing = Packing(runs, states, varlen)
    input_ids = torch.tensor([[token for s in sequences for token in s]], device=device)
    positions = torch.cat(
        [torch.arange(prefixes[g][0], prefixes[g][0] + n) for g, n in zip(groups, lengths, strict=True)]
    )
    positions = positions.to(device)
    last = torch.tensor(lengths, device=device).cumsum(0) - 1
    if packed_decoder.supports(backbone):
        return packed_decoder.last_states(backbone, input_ids[0], positions, packing, last, regions)
    hidden = backbone(
        input_ids=input_ids,
        position_ids=positions.unsqueeze(0),
        attention_mask={"full_attention": None, "sliding_attention": None},  # attention is by sequence: no mask
        use_cache=False,
        packing=packing,
    ).last_hidden_state
    return hidden[0, last]
