"""What the embedder and the reranker share: options, lazy loading and the batched forward pass."""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from qwen3_retrieval._validation import check_positive_int
from qwen3_retrieval.batching import run_in_batches
from qwen3_retrieval.devices import (
    BatchPolicy,
    batch_policy,
    default_attn_implementation,
    resolve_device,
    resolve_dtype,
)
from qwen3_retrieval.loading import load_error, load_shared, model_source, quiet_transformers
from qwen3_retrieval.pooling import last_token_pool, left_pad, right_pad, take_positions

L = TypeVar("L")


class LazyModel(Generic[L]):
    """Holds the options of one model and loads it, shared and once, on first use."""

    _kind: str = ""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        max_length: int,
        batch_tokens: int | None,
        show_progress: bool,
        attn_implementation: str | None,
    ) -> None:
        self.model = model_source(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_length = check_positive_int(max_length, "max_length", minimum=2)
        self.policy = batch_policy(self.device)
        if batch_tokens is not None:
            self.policy = replace(self.policy, batch_tokens=check_positive_int(batch_tokens, "batch_tokens"))
        self.show_progress = bool(show_progress)
        self.attn_implementation = attn_implementation or default_attn_implementation(self.device, self.dtype)
        self._loaded: L | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, device='{self.device}', dtype={self.dtype})"

    @property
    def cache_key(self) -> Hashable:
        """The key under which the loaded model is shared with other objects in this process."""
        return (self._kind, self.model, str(self.device), str(self.dtype), self.attn_implementation)

    def _state(self) -> L:
        """Return the loaded model, loading it (or taking the shared copy) on first use."""
        if self._loaded is None:
            self._loaded = load_shared(self.cache_key, self._load)
        return self._loaded

    def _load(self) -> L:
        raise NotImplementedError

    def _pretrained(self, auto_class: Any, **kwargs: Any) -> Any:
        """Call ``auto_class.from_pretrained`` on our model, turning "cannot load" into a clear ``ValueError``."""
        try:
            with quiet_transformers(not self.show_progress):
                return auto_class.from_pretrained(self.model, trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as err:
            raise load_error(self.model, err) from err

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return self._pretrained(AutoTokenizer)

    def _load_config(self) -> Any:
        from transformers import AutoConfig

        return self._pretrained(AutoConfig)

    def _load_weights(self, auto_class: Any) -> Any:
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        return self._pretrained(auto_class, **kwargs).to(self.device).eval()

    def _progress(self, total: int, desc: str) -> tqdm | None:
        return tqdm(total=total, desc=desc, unit="text") if self.show_progress else None


class RuntimeProperties:
    """Read-only views of the loading options, for the public model classes that hold a ``_runtime``."""

    _runtime: LazyModel[Any]

    @property
    def model(self) -> str:
        """The hub id or folder the model is loaded from."""
        return self._runtime.model

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self._runtime.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model weights."""
        return self._runtime.dtype

    @property
    def max_length(self) -> int:
        """The longest token sequence (with the trailing ``<|endoftext|>`` or the prompt template)."""
        return self._runtime.max_length


@torch.inference_mode()
def last_hidden_batched(
    backbone: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int,
    policy: BatchPolicy,
    device: torch.device,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Run ``backbone`` over token-budget batches; return each sequence's last-token state, in input order."""

    def run(batch: list[int]) -> torch.Tensor:
        rows = [sequences[i] for i in batch]
        if policy.padding_side == "right":
            input_ids, last = right_pad(rows, pad_id)
            # No mask: pads come after every real token, and causal attention never looks ahead.
            hidden = backbone(input_ids=input_ids.to(device)).last_hidden_state
            return take_positions(hidden, last)
        input_ids, attention_mask, position_ids = left_pad(rows, pad_id)
        hidden = backbone(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
        ).last_hidden_state
        return last_token_pool(hidden, attention_mask.to(device))

    lengths = [len(s) for s in sequences]
    return run_in_batches(
        lengths, policy.batch_tokens, run, max_padding=policy.max_padding, device=device, progress=progress
    )
