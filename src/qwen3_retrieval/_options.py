"""Pydantic fields that every framework adapter exposes, mapped onto the core's constructor arguments.

Only pydantic is imported here (both frameworks depend on it); no LangChain or LlamaIndex type. The adapters
declare the model field and the core field themselves; building the core, adopting a passed-in one and the checks
between the two live here, once.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, SecretStr, field_validator

from qwen3_retrieval._validation import check_score_threshold, check_top_n
from qwen3_retrieval.embedder import Qwen3Embedder
from qwen3_retrieval.redaction import redact_url, split_credentials
from qwen3_retrieval.reranker import Qwen3Reranker


class CoreOptions(BaseModel):
    """Options passed through to :class:`~qwen3_retrieval.Qwen3Embedder` / :class:`~qwen3_retrieval.Qwen3Reranker`."""

    _model_field: ClassVar[str] = "model"

    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or None for the best available."""
    dtype: str | None = None
    """``"float32"``, ``"bfloat16"``, ``"float16"``, or None (bfloat16 on capable GPUs, else float32)."""
    instruction: str | None = None
    """Task instruction; None uses the model cards' web-search instruction (or that of a passed-in core object)."""
    max_length: int = 8192
    """Longest token sequence per text (embedding) or per prompt (reranking); longer input is cut."""
    batch_tokens: int | None = None
    """Token budget of one batch; None picks a default for the device."""
    show_progress: bool = False
    """Show a tqdm progress bar."""
    engine: str | None = None
    """``"transformers"`` (default) or ``"vllm"`` to run the model in this process."""
    base_url: str | None = None
    """A vLLM server's OpenAI-compatible URL (``"http://host:8000/v1"``) to run the model instead."""
    api_key: SecretStr | None = None
    """The vLLM server's key, if any; kept secret in ``repr`` and dumps."""
    timeout: float = 120.0
    """Seconds to wait for one server request."""
    engine_options: dict[str, Any] | None = None
    """Extra arguments for ``vllm.LLM`` with ``engine="vllm"``."""

    def __getstate__(self) -> dict[Any, Any]:
        # Secrets never travel in a pickle (LlamaIndex's workers, multiprocessing): a copy reads VLLM_API_KEY.
        state = super().__getstate__()
        fields = dict(state["__dict__"])
        fields["api_key"] = None
        if fields.get("base_url"):
            fields["base_url"] = split_credentials(fields["base_url"])[0]
        return {**state, "__dict__": fields}

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "base_url" and isinstance(value, str) else value

    def core_kwargs(self) -> dict[str, Any]:
        """Return the constructor arguments for a core object built from these fields."""
        kwargs: dict[str, Any] = {
            "device": self.device,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "batch_tokens": self.batch_tokens,
            "show_progress": self.show_progress,
            "engine": self.engine,
            "base_url": self.base_url,
            "api_key": self.api_key.get_secret_value() if self.api_key is not None else None,
            "timeout": self.timeout,
            "engine_options": self.engine_options,
        }
        if self.instruction is not None:
            kwargs["instruction"] = self.instruction
        return kwargs

    def adopt(self, core: Qwen3Embedder | Qwen3Reranker, what: str) -> None:
        """Take a passed-in core object's options as this component's fields, so that a dump rebuilds it.

        Raises:
            ValueError: An option given here differs from the core's (both values are named).
        """
        theirs = core_options(core, self._model_field)
        conflicts = [
            f"{name}={getattr(self, name)!r} here but {what}.{name}={theirs[name]!r}"
            for name in sorted(self.model_fields_set & theirs.keys())
            if getattr(self, name) is not None and not _same(name, getattr(self, name), theirs[name], core)
        ]
        if conflicts:
            raise ValueError(
                f"{what}= was passed together with options that differ from it ({'; '.join(conflicts)}); "
                f"pass only {what}=, or make the options agree"
            )
        for name, value in theirs.items():
            setattr(self, name, value)


class EmbedderOptions(CoreOptions):
    """The embedding adapters' fields on top of :class:`CoreOptions`."""

    dimensions: int | None = None
    """Matryoshka output size, 32 to the model's hidden size; None keeps the full size."""
    normalize: bool = True
    """L2-normalise the vectors (the model cards do; cosine similarity then equals the dot product)."""

    def bind_embedder(self, given: Qwen3Embedder | None) -> Qwen3Embedder:
        """Return ``given`` after adopting its options, or a new core embedder built from the fields."""
        if given is not None:
            self.adopt(given, "embedder")
            return given
        model = getattr(self, self._model_field)
        return Qwen3Embedder(model, dimensions=self.dimensions, normalize=self.normalize, **self.core_kwargs())


class RerankerOptions(CoreOptions):
    """The reranking adapters' fields on top of :class:`CoreOptions`; selection itself is the core's ``rank``."""

    top_n: int | None = 3
    """How many documents to return; None keeps all."""
    score_threshold: float | None = None
    """Drop documents scoring below this probability (0 to 1); None keeps all."""

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, value: int | None) -> int | None:
        return check_top_n(value)

    @field_validator("score_threshold")
    @classmethod
    def _check_threshold(cls, value: float | None) -> float | None:
        return check_score_threshold(value)

    def bind_reranker(self, given: Qwen3Reranker | None) -> Qwen3Reranker:
        """Return ``given`` after adopting its options, or a new core reranker built from the fields."""
        if given is not None:
            self.adopt(given, "reranker")
            return given
        return Qwen3Reranker(getattr(self, self._model_field), **self.core_kwargs())


def accept_alias(data: Any, field: str, alias: str) -> Any:
    """Map ``alias=`` onto ``field=`` in constructor arguments (e.g. ``model_name`` for ``model``).

    Raises:
        ValueError: Both were given with different values.
    """
    if not isinstance(data, dict) or alias not in data:
        return data
    data = dict(data)
    value = data.pop(alias)
    if data.get(field, value) != value:
        raise ValueError(f"{field}={data[field]!r} and {alias}={value!r} differ; pass only one of them")
    data[field] = value
    return data


def core_options(core: Qwen3Embedder | Qwen3Reranker, model_field: str) -> dict[str, Any]:
    """Return a core object's options as adapter field values."""
    values: dict[str, Any] = {
        model_field: core.model,
        "device": str(core.device),
        "dtype": str(core.dtype).removeprefix("torch."),
        "instruction": core.instruction,
        "max_length": core.max_length,
        "batch_tokens": core.batch_tokens,
        "base_url": core.base_url,
        "engine": "vllm" if core.engine != "transformers" else None,
    }
    if isinstance(core, Qwen3Embedder):
        values.update(dimensions=core.dimensions, normalize=core.normalize)
    return values


def _same(name: str, ours: Any, theirs: Any, core: Qwen3Embedder | Qwen3Reranker) -> bool:
    # Compare what the values mean: "cpu" and torch.device("cpu"), "fp32" and "float32", "./m" and "m".
    from qwen3_retrieval.devices import resolve_device, resolve_dtype
    from qwen3_retrieval.loading import model_source

    if name == "device":
        return resolve_device(ours) == core.device
    if name == "dtype":
        return resolve_dtype(ours, core.device) == core.dtype
    if name == "base_url":
        return bool(redact_url(ours) == theirs)
    if name in ("model", "model_name"):
        return bool(model_source(ours) == core.model)
    return bool(ours == theirs)
