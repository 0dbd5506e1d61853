"""The framework components' pydantic fields, generated from the core's options, and the binding to a core object.

Only pydantic is imported here (both frameworks depend on it); no LangChain or LlamaIndex type. Every option of
:class:`~qwen3_retrieval.options.EmbedderOptions` / :class:`~qwen3_retrieval.options.RerankerOptions` becomes a
field with the option's docstring as its description, so an option added to the core appears in both
frameworks. The components declare only their model field, their core field and their framework's own fields.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_validator, model_validator
from typing_extensions import Self

from qwen3_retrieval._validation import check_score_threshold, check_top_n
from qwen3_retrieval.embedder import Qwen3Embedder
from qwen3_retrieval.options import (
    EmbedderOptions,
    ModelOptions,
    RerankerOptions,
    VLEmbedderOptions,
    VLRerankerOptions,
)
from qwen3_retrieval.redaction import redact_url, without_secrets
from qwen3_retrieval.reranker import Qwen3Reranker
from qwen3_retrieval.vl.models import Qwen3VLEmbedder, Qwen3VLReranker

__all__ = ["COMPONENT_CONFIG", "EmbedderFields", "RerankerFields", "VLEmbedderFields", "VLRerankerFields"]

COMPONENT_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())
"""Unknown fields are errors (a typo is not silently dropped); the core object is an arbitrary type."""


class _CoreFields(BaseModel):
    """What every component does with its fields: accept the model's other name, and build or adopt the core."""

    _model_field: ClassVar[str] = "model"
    """The component's model field (``model``, or ``model_name`` where the framework names it so)."""
    _model_alias: ClassVar[str] = "model_name"
    """The other name accepted for it, as ``HuggingFaceEmbeddings`` and LlamaIndex components accept."""
    _core_field: ClassVar[str]
    """The field that holds the core object (``embedder`` or ``reranker``)."""
    _core_class: ClassVar[type[Qwen3Embedder | Qwen3Reranker | Qwen3VLEmbedder | Qwen3VLReranker]]
    _options_class: ClassVar[type[ModelOptions]]

    if TYPE_CHECKING:  # the generated fields, for type checkers

        def __getattr__(self, name: str) -> Any: ...

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        return {**state, "__dict__": without_secrets(state["__dict__"])}

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "base_url" and isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _accept_model_alias(cls, data: Any) -> Any:
        return accept_alias(data, cls._model_field, cls._model_alias)

    @model_validator(mode="after")
    def _bind_core(self) -> Self:
        setattr(self, self._core_field, self._bound_core(getattr(self, self._core_field)))
        return self

    def _core_options(self, cls: type[ModelOptions]) -> dict[str, Any]:
        """The fields' values as options of ``cls``: what a core object is built from."""
        values = {f.name: getattr(self, f.name) for f in fields(cls) if f.name != "model"}
        key = values.pop("api_key")
        return {**values, "api_key": key.get_secret_value() if key is not None else None}

    def _bound_core(self, given: Any) -> Any:
        """Return ``given`` after taking its options as this component's fields, or a new core object.

        Raises:
            ValueError: An option given here differs from the core's (both values are named).
        """
        cls, what = self._core_class, self._core_field
        if given is None:
            return cls(getattr(self, self._model_field), **self._core_options(self._options_class))
        theirs = given.options.dump()
        conflicts = []
        for name in sorted(self.model_fields_set):
            option = "model" if name == self._model_field else name
            ours = getattr(self, name)
            if option in theirs and ours is not None and not _same(given.options, option, ours):
                conflicts.append(f"{name}={ours!r} here but {what}.{option}={theirs[option]!r}")
        if conflicts:
            raise ValueError(
                f"{what}= was passed together with options that differ from it ({'; '.join(conflicts)}); "
                f"pass only {what}=, or make the options agree"
            )
        # Take the core's options as the fields, so that a dump rebuilds it (its secrets stay with it).
        for name, value in theirs.items():
            if name != "api_key":
                setattr(self, self._model_field if name == "model" else name, value)
        return given


def _same(options: ModelOptions, name: str, value: Any) -> bool:
    """Whether ``name=value`` means what the core's option does: ``"fp32"`` and ``"float32"``, ``"./m"`` and ``"m"``."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if name == "base_url" and isinstance(value, str):
        return redact_url(value) == options.shown_url  # the core's password is not shown: compare what is
    try:
        return bool(getattr(replace(options, **{name: value}), name) == getattr(options, name))
    except (TypeError, ValueError):
        return False


def _generated(name: str, base: type[_CoreFields]) -> Any:
    """A pydantic model on ``base`` with a field per option of its options class (each keeps its own model)."""
    cls = base._options_class
    hints = get_type_hints(cls)
    definitions: dict[str, Any] = {
        f.name: (
            SecretStr | None if f.name == "api_key" else hints[f.name],
            Field(default=f.default, description=f.metadata["doc"]),
        )
        for f in fields(cls)
        if f.name != "model"
    }
    return create_model(name, __base__=base, __module__=__name__, **definitions)


class _EmbedderBase(_CoreFields):
    _core_field = "embedder"
    _core_class: ClassVar[type[Qwen3Embedder | Qwen3VLEmbedder]] = Qwen3Embedder
    _options_class = EmbedderOptions


class _Selection(_CoreFields):
    """The reranking components' selection, applied to the core's scores (a framework convention, not an option)."""

    _core_field = "reranker"
    _core_class: ClassVar[type[Qwen3Reranker | Qwen3VLReranker]] = Qwen3Reranker
    _options_class = RerankerOptions

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


class _VLEmbedderBase(_EmbedderBase):
    _core_class = Qwen3VLEmbedder
    _options_class = VLEmbedderOptions


class _VLSelection(_Selection):
    _core_class = Qwen3VLReranker
    _options_class = VLRerankerOptions


if TYPE_CHECKING:
    EmbedderFields = _EmbedderBase
    RerankerFields = _Selection
    VLEmbedderFields = _VLEmbedderBase
    VLRerankerFields = _VLSelection
else:
    EmbedderFields = _generated("EmbedderFields", _EmbedderBase)
    RerankerFields = _generated("RerankerFields", _Selection)
    VLEmbedderFields = _generated("VLEmbedderFields", _VLEmbedderBase)
    VLRerankerFields = _generated("VLRerankerFields", _VLSelection)


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
