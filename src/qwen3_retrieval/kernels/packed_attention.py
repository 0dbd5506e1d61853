"""Attention inside each sequence of a packed row: the attention function packed forward passes run.

Two kernels, one chosen per forward pass by :func:`kernel_for` (see :func:`choose_kernel` for the rule):

- ``"varlen"``, on CUDA GPUs in bfloat16/float16: torch's ``varlen_attn`` (FlashAttention over cumulative sequence
  offsets), one call per layer for the whole row, whatever the lengths. Its offsets are built once per forward
  pass (:func:`varlen_offsets`), so a layer launches no per-length kernels and never waits on the host.
- ``"sdpa"``, everywhere else: consecutive sequences of one length are stacked and go through PyTorch's fused
  causal attention together. On a GPU that would be one launch per distinct length per layer (about 1,700 for a
  16k-token batch of 60 documents), which is why GPUs take the first kernel where they can. In bfloat16 on a
  CPU with AMX, each sequence without a shared prefix is padded to a multiple of :data:`ATTENTION_ROWS` rows
  first (:func:`choose_row_multiple`).

Either way each sequence attends after its shared prefix's keys and values, if any. The function is registered
with transformers under :data:`PACKED_ATTENTION`; a model loaded with it runs ordinary (unpacked) calls through
transformers' ``sdpa`` function, unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from qwen3_retrieval.devices import cpu_has_amx

Kernel = Literal["varlen", "sdpa"]
"""The packed attention kernels: torch's FlashAttention over sequence offsets, or the per-length SDPA loop."""

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


class VarlenOffsets(NamedTuple):
    """``varlen_attn``'s arguments for one packed row, built once per forward pass (:func:`varlen_offsets`).

    Sequence ``i``'s queries are rows ``cu_seq_q[i]:cu_seq_q[i+1]`` of the packed row; its keys and values are
    rows ``cu_seq_k[i]:cu_seq_k[i+1]`` of the joined keys: its prefix's, then its own. FlashAttention aligns a
    causal mask to the bottom-right corner when a sequence has more keys than queries, which is exactly "every
    prefix token, then causal over its own", so shared-prefix rows need no mask and no second call.
    """

    cu_seq_q: torch.Tensor
    """``(sequences + 1,)`` int32 on the device: where each sequence's queries start, then the row's end."""
    cu_seq_k: torch.Tensor
    """``(sequences + 1,)`` int32 on the device: where each sequence's joined keys start, then their end."""
    max_q: int
    max_k: int
    gather: torch.Tensor | None
    """Row ``j`` of the joined keys is row ``gather[j]`` of ``cat(prefix 0 keys, prefix 1 keys, ..., the packed
    row's keys)`` (prefixes in :attr:`Packing.prefixes` order, absent ones taking no rows); None when no sequence
    has a prefix, so the packed row's keys are the joined keys as they are."""
    cu_seq_last: torch.Tensor
    """``(sequences + 1,)`` int32 on the device, ``0, 1, ..., sequences``: the queries' offsets when only each
    sequence's last token queries (``attend(..., last_only=True)``); the bottom-right mask lets it see every key."""


@dataclass(frozen=True)
class Packing:
    """Where each sequence lies in a packed row, and the prefix keys and values each one attends to first."""

    runs: list[Run]
    prefixes: list[LayerStates | None]
    """Per prefix, each layer's keys and values, or None for no prefix."""
    varlen: VarlenOffsets | None = None
    """The offsets for the ``"varlen"`` kernel; None runs the per-length SDPA loop."""


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
    if packing.varlen is not None:
        offsets = packing.varlen
        if last_only:  # one query per sequence, its last token
            offsets = offsets._replace(cu_seq_q=offsets.cu_seq_last, max_q=1)
        return _attend_varlen(layer, queries, keys, values, packing, offsets, scaling)
    heads, kv_heads, head_dim = queries.shape[1], keys.shape[1], queries.shape[-1]
    multiple = row_multiple_for(queries.device, queries.dtype)
    out = queries.new_empty(queries.shape)
    done = 0  # sequences in the runs before this one
    for first, length, count, prefix_index in packing.runs:
        layers = packing.prefixes[prefix_index]
        prefix = layers[layer] if layers is not None else None
        span = slice(first, first + length * count)
        # Only plain causal runs are padded: with a prefix, the explicit mask measured no faster padded.
        rows = length if last_only or prefix is not None else -(-length // multiple) * multiple
        k, v = (_side_by_side(states[span], count, rows) for states in (keys, values))
        q = queries[done : done + count].unsqueeze(2) if last_only else _side_by_side(queries[span], count, rows)
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
            out[span].view(count, length, heads, head_dim).copy_(attended.transpose(1, 2)[:, :length])
        done += count
    return out


def _side_by_side(states: torch.Tensor, count: int, rows: int) -> torch.Tensor:
    """A run's ``count`` equal-length sequences side by side, ``(count, heads, rows, head_dim)``.

    From their ``(tokens, heads, head_dim)`` rows: a view, unless ``rows`` exceeds their length.
    """
    stacked = states.view(count, -1, *states.shape[1:])
    if rows != stacked.shape[1]:  # zero rows after each sequence: causal attention keeps real tokens from them
        stacked = torch.nn.functional.pad(stacked, (0, 0, 0, 0, 0, rows - stacked.shape[1]))
    return stacked.transpose(1, 2)


def _attend_varlen(
    layer: int,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    packing: Packing,
    offsets: VarlenOffsets,
    scaling: float | None,
) -> torch.Tensor:
    """The whole row's causal attention in one ``varlen_attn`` call; no host synchronisation."""
    if offsets.gather is not None:  # lay each sequence's prefix keys and values in front of its own
        sources = [layers[layer] for layers in packing.prefixes if layers is not None]
        # A prefix's states are (1, kv_heads, length, head_dim), as transformers' cache keeps them.
        keys = torch.cat([*(k[0].transpose(0, 1) for k, _ in sources), keys]).index_select(0, offsets.gather)
        values = torch.cat([*(v[0].transpose(0, 1) for _, v in sources), values]).index_select(0, offsets.gather)
    call = varlen_call()
    assert call is not None, "the varlen kernel is chosen only where torch has varlen_attn (kernel_for)"
    gqa = keys.shape[1] != queries.shape[1]
    return call(queries.contiguous(), keys.contiguous(), values.contiguous(), offsets, scaling, gqa=gqa)


def varlen_offsets(runs: Sequence[Run], prefix_lengths: Sequence[int], device: torch.device) -> VarlenOffsets:
    """The ``varlen_attn`` offsets of a packed row laid out as ``runs`` (see :class:`VarlenOffsets`).

    ``prefix_lengths`` gives each prefix's token count (0: none), indexed like :attr:`Run.prefix`. Built on the
    host from lengths it already knows, and moved to ``device`` in one copy each: no layer waits on it.
    """
    query_lengths = [length for run in runs for length in [run.length] * run.sequences]
    key_lengths = [prefix_lengths[run.prefix] + length for run in runs for length in [run.length] * run.sequences]
    gather = None
    if any(prefix_lengths[run.prefix] for run in runs):
        starts = [0]  # where each prefix's rows start in the concatenated source; the packed row comes last
        for length in prefix_lengths:
            starts.append(starts[-1] + length)
        own = starts[-1]
        pieces = []
        for run in runs:
            size = prefix_lengths[run.prefix]
            prefix_rows = torch.arange(starts[run.prefix], starts[run.prefix] + size).expand(run.sequences, size)
            own_rows = torch.arange(own + run.first, own + run.first + run.length * run.sequences)
            pieces.append(torch.cat([prefix_rows, own_rows.view(run.sequences, run.length)], dim=1).flatten())
        gather = torch.cat(pieces).to(device)

    def cumulative(lengths: list[int]) -> torch.Tensor:
        return torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)

    return VarlenOffsets(
        cumulative(query_lengths),
        cumulative(key_lengths),
        max(query_lengths, default=0),
        max(key_lengths, default=0),
        gather,
        cumulative([1] * len(query_lengths)),
    )


VarlenCall = Callable[..., torch.Tensor]
"""``(queries, keys, values, offsets: VarlenOffsets, scale, *, gqa) -> (tokens, heads, head_dim)``: causal
attention of each sequence's queries over its (joined) keys, aligned to the bottom-right corner."""


@functools.cache
def varlen_call() -> VarlenCall | None:
    """This torch's ``varlen_attn`` as a :data:`VarlenCall`, or None where torch has none.

    Its signature changed between releases: 2.9-2.10 take ``is_causal``; later ones ``window_size=(-1, 0)`` for
    causal attention and ``scale``; 2.12 on want ``enable_gqa=True`` for fewer key than query heads, which earlier
    ones pass straight to FlashAttention (it shares key heads natively). The keywords are read from its
    signature, once.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    causal: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    takes_scale, takes_gqa = "scale" in parameters, "enable_gqa" in parameters

    def call(
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        offsets: VarlenOffsets,
        scale: float | None,
        *,
        gqa: bool,
    ) -> torch.Tensor:
        options = dict(causal)
        if takes_gqa and gqa:
            options["enable_gqa"] = True
        if scale is not None and takes_scale:
            options["scale"] = scale
        elif scale is not None and abs(scale - queries.shape[-1] ** -0.5) > 1e-12:
            # An older varlen_attn always scales by 1/sqrt(head_dim): fold any other scale into the queries.
            queries = queries * (scale * queries.shape[-1] ** 0.5)
        out = varlen_attn(queries, keys, values, *offsets[:4], **options)
        return out if isinstance(out, torch.Tensor) else out[0]

    return call


VARLEN_DTYPES = (torch.bfloat16, torch.float16)
"""The dtypes FlashAttention runs; float32 takes the SDPA loop, which keeps it exact to 1e-5."""


def choose_kernel(
    device_type: str, dtype: torch.dtype, *, has_varlen: bool, capability: tuple[int, int] | None = None
) -> Kernel:
    """The packed attention kernel for a model on ``device_type`` in ``dtype``.

    ``"varlen"`` where FlashAttention runs: CUDA, bfloat16 or float16, a GPU of compute capability 8.0 or newer
    (torch builds its FlashAttention for sm80 on), and a torch that has ``varlen_attn`` (``has_varlen``).
    ``"sdpa"`` (the per-length loop) otherwise: every CPU, float32 anywhere (FlashAttention has no float32
    kernel), MPS, older GPUs and older torch. ``capability`` None on CUDA means unknown, and is taken as too old.
    """
    if (
        device_type == "cuda"
        and dtype in VARLEN_DTYPES
        and has_varlen
        and capability is not None
        and capability >= (8, 0)
    ):
        return "varlen"
    return "sdpa"


ATTENTION_ROWS = 32
"""The row multiple the SDPA loop rounds each sequence up to where :func:`choose_row_multiple` says so.

With AMX, torch's CPU flash attention runs bfloat16 sequences of a multiple of 32 tokens far faster than
lengths just below one (docs/design-notes.md); without AMX, and in float32, padding only adds work. The pad rows
come after each sequence's own, so causal attention keeps every real token from seeing them.
"""


def choose_row_multiple(device_type: str, dtype: torch.dtype, *, amx: bool) -> int:
    """The row multiple the SDPA loop pads each plain causal sequence to on ``device_type`` in ``dtype``.

    :data:`ATTENTION_ROWS` for bfloat16 on a CPU with AMX tiles (``amx``); 1 (no padding) everywhere else.
    """
    return ATTENTION_ROWS if device_type == "cpu" and dtype == torch.bfloat16 and amx else 1


def row_multiple_for(device: torch.device, dtype: torch.dtype) -> int:
    """:func:`choose_row_multiple` for tensors on ``device`` in ``dtype``, on this CPU."""
    return choose_row_multiple(device.type, dtype, amx=device.type == "cpu" and cpu_has_amx())


def kernel_for(device: torch.device, dtype: torch.dtype) -> Kernel:
    """:func:`choose_kernel` for a model on ``device`` in ``dtype``, with this torch and this GPU."""
    capability = None
    if device.type == "cuda" and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(device)
    return choose_kernel(device.type, dtype, has_varlen=varlen_call() is not None, capability=capability)


def register_packed_attention() -> str:
    """Register :func:`packed_attention` with transformers (idempotent); return the name to load a model with."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # the mask ordinary calls get, as with sdpa
    return PACKED_ATTENTION
