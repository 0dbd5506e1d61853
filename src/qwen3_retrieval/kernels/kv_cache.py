"""transformers' key/value cache across the versions we support: a prefix's keys and values, and passing a cache.

transformers 5.x renamed the forward argument and output field ``past_key_values`` to ``cache`` and logs a
deprecation for the old name on every first call (to be removed in 5.40); releases before the rename only know
the old name. Both directions are decided here, from the model's own signature, so no call site guesses.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch


@functools.cache
def _cache_argument(forward: Any) -> str:
    parameters = inspect.signature(forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(backbone: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """Return the keyword argument that hands ``cache`` to ``backbone``'s forward, under the name it takes."""
    return {_cache_argument(type(backbone).forward): cache}


def prefix_states(
    backbone: torch.nn.Module, prefix: Sequence[int], device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return each layer's keys and values of ``prefix`` run alone (one row)."""
    output = backbone(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True)
    # Read the field by its current name where it exists: the old name is a deprecated alias there.
    cache = output["cache"] if "cache" in output else output["past_key_values"]
    return [(layer.keys, layer.values) for layer in cache.layers]
