"""Dense references for packed attention: a CPU stand-in for torch's ``varlen_attn``, and what packed rows must give.

FlashAttention has no CPU kernel, so the ``"varlen"`` kernel cannot run here. This stand-in computes what
FlashAttention's varlen call is documented to compute, written out independently of the code that builds its
arguments: for each sequence ``i``, the queries ``cu_seq_q[i]:cu_seq_q[i+1]`` attend causally to the keys
``cu_seq_k[i]:cu_seq_k[i+1]``, the causal mask aligned to the bottom-right corner (query ``j`` of ``n_q`` sees keys
``0 .. n_k - n_q + j``), key heads shared by ``heads // kv_heads`` query heads. It computes in float64 and checks
the arguments FlashAttention would reject or misread (dtype and device of the offsets, wrong maxima), so a test
that runs the model through it checks the argument building end to end. :func:`reference_packed_attention` is
what either kernel must give for a packed row, sequence by sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qwen3_retrieval.kernels.packed_attention import LayerStates, Run, VarlenOffsets


def reference_varlen_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    offsets: VarlenOffsets,
    scale: float | None = None,
    *,
    gqa: bool = False,
) -> torch.Tensor:
    """Causal varlen attention (a :data:`qwen3_retrieval.kernels.packed_attention.VarlenCall`), in float64.

    Only ``offsets``' sequence offsets and maxima are read; the keys are the joined ones already.
    """
    cu_seq_q, cu_seq_k, max_q, max_k = offsets.cu_seq_q, offsets.cu_seq_k, offsets.max_q, offsets.max_k
    for cu in (cu_seq_q, cu_seq_k):
        if cu.dtype != torch.int32 or cu.device != queries.device or cu.dim() != 1:
            raise ValueError(f"offsets must be 1-D int32 on the queries' device, got {cu.dtype} {cu.device}")
    if cu_seq_q.shape != cu_seq_k.shape or int(cu_seq_q[-1]) != queries.shape[0] or int(cu_seq_k[-1]) != keys.shape[0]:
        raise ValueError("offsets do not cover the queries and keys")
    q_lengths, k_lengths = cu_seq_q.diff().tolist(), cu_seq_k.diff().tolist()
    if max_q != max(q_lengths) or max_k != max(k_lengths):
        raise ValueError(f"max_q/max_k {max_q}/{max_k} are not the longest lengths {max(q_lengths)}/{max(k_lengths)}")
    heads, kv_heads = queries.shape[1], keys.shape[1]
    if (heads != kv_heads) != gqa:
        raise ValueError(f"gqa={gqa} with {heads} query heads and {kv_heads} key heads")
    scale = queries.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty(queries.shape, dtype=torch.float64)
    for i, (n_q, n_k) in enumerate(zip(q_lengths, k_lengths, strict=True)):
        if n_q > n_k:
            raise ValueError(f"sequence {i} has more queries ({n_q}) than keys ({n_k})")
        q0, k0 = int(cu_seq_q[i]), int(cu_seq_k[i])
        q = queries[q0 : q0 + n_q].double().transpose(0, 1)  # (heads, n_q, dim)
        k = keys[k0 : k0 + n_k].double().transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        v = values[k0 : k0 + n_k].double().transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        scores = q @ k.transpose(1, 2) * scale
        visible = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q)
        scores = scores.masked_fill(~visible, float("-inf"))
        out[q0 : q0 + n_q] = (scores.softmax(-1) @ v).transpose(0, 1)
    return out.to(queries.dtype)


def reference_packed_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    runs: Sequence[Run],
    prefixes: Sequence[LayerStates | None],
    layer: int,
    scale: float,
) -> torch.Tensor:
    """What packed attention must give for a packed row laid out as ``runs``, written out densely in float64.

    Each sequence alone: its queries over its prefix's keys (layer ``layer`` of ``prefixes[run.prefix]``, all of
    them) and then its own, causally; key heads shared by ``heads // kv_heads`` query heads. Shapes as in
    :func:`qwen3_retrieval.kernels.packed_attention.attend`.
    """
    heads, kv_heads = queries.shape[1], keys.shape[1]
    out = torch.empty(queries.shape, dtype=torch.float64, device=queries.device)
    for run in runs:
        states = prefixes[run.prefix]
        for s in range(run.sequences):
            rows = slice(run.first + s * run.length, run.first + (s + 1) * run.length)
            k, v = keys[rows], values[rows]
            if states is not None:  # (1, kv_heads, prefix, head_dim), as transformers' cache keeps them
                k = torch.cat([states[layer][0][0].transpose(0, 1), k])
                v = torch.cat([states[layer][1][0].transpose(0, 1), v])
            k, v = (t.double().repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
            scores = torch.einsum("qhd,khd->hqk", queries[rows].double(), k) * scale
            n, total = run.length, k.shape[0]
            visible = torch.ones(n, total, dtype=torch.bool, device=queries.device).tril(total - n)
            out[rows] = torch.einsum("hqk,khd->qhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)
    return out
