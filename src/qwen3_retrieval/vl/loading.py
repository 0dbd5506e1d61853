"""Loading the Qwen3-VL retrieval models: tokenizer, pixel settings and the engine, once per process.

The engine loads in its own module (see :mod:`qwen3_retrieval.engines.registry`): transformers in this process
or, with ``base_url``, a vLLM server (no weights are loaded here).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from qwen3_retrieval.engines import EmbeddingEngine, ScoringEngine
from qwen3_retrieval.loading import pretrained
from qwen3_retrieval.options import VisionOptions
from qwen3_retrieval.tokenization import TextTokenizer
from qwen3_retrieval.vl.media import ImageSettings
from qwen3_retrieval.vl.processors import VLSequence


class VLEngine(EmbeddingEngine[VLSequence], ScoringEngine[Sequence[VLSequence]], Protocol):
    """What runs the Qwen3-VL models' prompts: last-token states, or a reranker's P(yes) per prompt."""


@dataclass(eq=False)
class LoadedVL:
    """A Qwen3-VL model's shared parts."""

    tokenizer: TextTokenizer
    settings: ImageSettings
    engine: VLEngine
    hidden_size: int


def load_vl(options: VisionOptions, *, reranker: bool) -> LoadedVL:
    """Load a Qwen3-VL-Embedding (``reranker=False``) or Qwen3-VL-Reranker checkpoint.

    Raises:
        ValueError: The checkpoint cannot be loaded, or is not a Qwen3-VL one.
    """
    config = pretrained(options, "AutoConfig")
    if getattr(config, "model_type", None) != "qwen3_vl":
        raise ValueError(
            f"{options.model!r} is a {getattr(config, 'model_type', 'unknown')!r} checkpoint, not a Qwen3-VL one; "
            "pass a Qwen3-VL-Embedding or Qwen3-VL-Reranker model (Qwen3Embedder/Qwen3Reranker take the text models)"
        )
    tokenizer = TextTokenizer(pretrained(options, "AutoTokenizer"))
    settings = _image_settings(options, config)
    hidden_size = config.text_config.hidden_size
    engine = options.runs_on.vl_loader().load_vl(options, tokenizer, config, reranker)
    return LoadedVL(tokenizer, settings, engine, hidden_size)


def _image_settings(options: VisionOptions, config: Any) -> ImageSettings:
    """The vision tower's sizes from its config; the normalisation from ``preprocessor_config.json``."""
    vision = config.vision_config
    mean = std = (0.5, 0.5, 0.5)
    processor = _preprocessor_config(options.model)
    if processor:
        mean = tuple(processor.get("image_mean", mean))
        std = tuple(processor.get("image_std", std))
    return ImageSettings(
        patch_size=int(vision.patch_size),
        temporal_patch_size=int(vision.temporal_patch_size),
        merge_size=int(vision.spatial_merge_size),
        image_mean=mean,
        image_std=std,
        min_pixels=options.min_pixels,
        max_pixels=options.max_pixels,
    )


def _preprocessor_config(model: str) -> dict[str, Any] | None:
    from transformers.utils import cached_file

    try:
        path = cached_file(model, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        loaded: dict[str, Any] = json.load(file)
    return loaded
