"""Pydantic fields that every framework adapter exposes, mapped onto the core's constructor arguments.

Only pydantic is imported here (both frameworks depend on it); no LangChain or LlamaIndex type.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class CoreOptions(BaseModel):
    """Options passed through to :class:`~qwen3_retrieval.Qwen3Embedder` / :class:`~qwen3_retrieval.Qwen3Reranker`."""

    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or None for the best available."""
    dtype: str | None = None
    """``"float32"``, ``"bfloat16"``, ``"float16"``, or None (bfloat16 on capable GPUs, else float32)."""
    instruction: str | None = None
    """Task instruction; None uses the model cards' web-search instruction (or that of a passed-in core object)."""
    max_length: int = 8192
    """Longest token sequence per text (embedding) or per prompt (reranking); longer input is cut."""
    batch_tokens: int | None = None
    """Token budget of one padded batch; None picks a default for the device."""
    show_progress: bool = False
    """Show a tqdm progress bar."""

    def core_kwargs(self) -> dict[str, Any]:
        """Return the constructor arguments for a core object built from these fields."""
        kwargs: dict[str, Any] = {
            "device": self.device,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "batch_tokens": self.batch_tokens,
            "show_progress": self.show_progress,
        }
        if self.instruction is not None:
            kwargs["instruction"] = self.instruction
        return kwargs


def adopt_core(options: BaseModel, core: Any, field: str, model_field: str = "model") -> str:
    """Return the model name of a core object passed as ``embedder=``/``reranker=`` (pydantic checked its type).

    Raises:
        ValueError: a different ``model`` was given next to it.
    """
    given = getattr(options, model_field, None)
    if model_field in options.model_fields_set and given not in (None, core.model):
        raise ValueError(f"{model_field}={given!r} differs from {field}.model={core.model!r}; pass only one of them")
    return str(core.model)
