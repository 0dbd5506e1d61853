"""Faster equivalents of transformers' own layers, put in place on a loaded model where they give its results.

- Linear layers on an x86 CPU in float32 (:func:`pack_linears`): oneDNN with weights laid out for it once,
  instead of ``F.linear``'s MKL call.
- Qwen3 normalises every query and key head (``q_norm``/``k_norm``) with transformers' RMSNorm, written as five
  element-wise passes whose mean runs over only 128 values a head, each pass bound by memory; torch's own
  ``rms_norm`` does it in one, with identical results in float32 (:func:`fuse_rms_norms`). In bfloat16 transformers
  rounds the normalised values before the weight multiply, which ``rms_norm`` with a weight does not; the same
  rounding in two passes (``rms_norm`` without a weight, then the multiply) measured no clear gain, so bfloat16
  keeps transformers' layer.
"""

from __future__ import annotations

import platform
import types
from typing import Any

import torch


def _rms_norm(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)


def fuse_rms_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Run every float32 RMSNorm of ``model`` through ``torch.nn.functional.rms_norm``; return ``model``."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            type(module).__name__.endswith("RMSNorm")
            and isinstance(weight, torch.Tensor)
            and weight.dtype == torch.float32
            and isinstance(getattr(module, "variance_epsilon", None), float)
        ):
            module.forward = types.MethodType(_rms_norm, module)
    return model


ROW_CHUNK = 512
"""Rows (tokens) one oneDNN call takes; longer inputs run in chunks of this many."""

ROW_SIZES = (16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)
"""The only row counts oneDNN ever sees: a chunk's rows are padded up to the next of these.

oneDNN builds and caches a primitive for every distinct shape (up to 1024 of them), each holding a scratch
buffer that grows with its row count. Fed every token count a stream of batches makes, the cache grew with each
new count: 40 lengths of about 400-750 tokens took 137 MB of extra peak memory at the 0.6B width with 4 layers,
against 45 MB for one (``tests/test_memory.py``). With these sizes it holds at most 16 row counts per weight
shape, whatever the input. Padding costs under 16 rows below 64, and at most a quarter above.
"""


def _chunk_rows(rows: int) -> int:
    return next(size for size in ROW_SIZES if size >= rows)


class PackedLinear(torch.nn.Module):
    """A float32 ``torch.nn.Linear`` run through oneDNN, its weight reordered for oneDNN once at load.

    Inputs of any row count run in chunks of at most :data:`ROW_CHUNK` rows, each padded up to one of
    :data:`ROW_SIZES`, so oneDNN's cache holds a bounded number of primitives.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # A plain attribute, not a parameter: it is oneDNN's opaque layout, and the only copy of the weight kept.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROW_CHUNK)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` over the last dimension, like ``torch.nn.Linear``."""
        flat = x.reshape(-1, x.shape[-1])
        total = flat.shape[0]
        if total <= ROW_CHUNK:  # most batches: one call, its output returned as it is (a view when padded)
            return self._chunk(flat).reshape(*x.shape[:-1], self.out_features)
        out = flat.new_empty(total, self.out_features)
        for start in range(0, total, ROW_CHUNK):
            out[start : start + ROW_CHUNK] = self._chunk(flat[start : start + ROW_CHUNK])
        return out.reshape(*x.shape[:-1], self.out_features)

    def _chunk(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        padded = _chunk_rows(count)
        if padded != count:
            rows = torch.nn.functional.pad(rows, (0, 0, 0, padded - count))
        return torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")[:count]


def onednn_linears_available() -> bool:
    """Whether this torch runs float32 linear layers through oneDNN with packed weights (x86 CPUs only)."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack_linears(backbone: torch.nn.Module) -> torch.nn.Module:
    """On an x86 CPU, run ``backbone``'s float32 linear layers through oneDNN with packed weights; return it.

    ``F.linear`` on a CPU calls MKL; oneDNN with weights reordered ahead of time (what vLLM's CPU backend and inductor's
    weight freezing do) runs the same multiplies faster on the CPUs measured (docs/benchmarks.md,
    docs/design-notes.md). The reordered copy replaces the weight, so the model's memory does not grow.
    bfloat16 already runs through oneDNN in ``F.linear``, and other CPUs and devices keep it too.
    """
    if not onednn_linears_available():
        return backbone
    names = [
        name
        for name, module in backbone.named_modules()
        if type(module) is torch.nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    ]
    # By name: a list of the modules themselves kept every replaced weight alive until the last was packed, 565 MB
    # more peak memory for the 0.6B shape in float32 (4448 MB against 3883 MB).
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = backbone.get_submodule(parent_name)
        setattr(parent, child_name, PackedLinear(getattr(parent, child_name)))
    return backbone
