"""Loading the Qwen3-VL retrieval models: tokenizer, pixel settings and the engine, once per process.

The engine is transformers in this process or, with ``base_url``, a vLLM server (no weights are loaded here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qwen3_retrieval.engines.transformers_vl import TransformersVL
from qwen3_retrieval.engines.vllm_http_vl import HttpVL
from qwen3_retrieval.kernels.forking import compute_section
from qwen3_retrieval.kernels.fused import fuse_rms_norms, pack_linears
from qwen3_retrieval.loading import pretrained, server_client
from qwen3_retrieval.options import VisionOptions
from qwen3_retrieval.processors import answer_token_ids
from qwen3_retrieval.prompts import EOS_TOKEN
from qwen3_retrieval.tokenization import TextTokenizer
from qwen3_retrieval.vl.media import ImageSettings
from qwen3_retrieval.vl.messages import ChatReader


@dataclass(eq=False)
class LoadedVL:
    """A Qwen3-VL model's shared parts."""

    tokenizer: TextTokenizer
    settings: ImageSettings
    engine: TransformersVL | HttpVL
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
    if options.engine == "http":
        server = HttpVL(server_client(options), ChatReader(tokenizer), hidden_size)
        return LoadedVL(tokenizer, settings, server, hidden_size)
    pad_id = tokenizer.token_id(EOS_TOKEN) or 0  # pads are masked out; any id does
    yes_no = answer_token_ids(tokenizer, options.model) if reranker else None
    with compute_section():  # torch copies the weights with its parallel kernels (see qwen3_retrieval.kernels.forking)
        auto_class = "AutoModelForImageTextToText" if reranker else "AutoModel"
        model = pretrained(options, auto_class, dtype=options.torch_dtype,
                            attn_implementation=options.attn_implementation)  # fmt: skip
        model = model.to(options.torch_device).eval()
        direction = None
        if yes_no is not None:
            # The official score is sigmoid((W[yes] - W[no]) . h) on the backbone's last state; the difference
            # is taken in float32, as vLLM takes it (the official code rounds it to the model dtype).
            head = model.get_output_embeddings().weight
            direction = (head[yes_no[0]].float() - head[yes_no[1]].float()).detach().to(options.torch_device)
            model = model.model  # the head is only read above
        # The text models' exact fast paths: float32 RMSNorms through rms_norm, linears through packed oneDNN.
        model = pack_linears(fuse_rms_norms(model))
    engine = TransformersVL(model, pad_id, options.torch_device, direction)
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
        patch_size=int(vision.patch_size), temporal_patch_size=int(vision.temporal_patch_size),
        merge_size=int(vision.spatial_merge_size), image_mean=mean, image_std=std,
        min_pixels=options.min_pixels, max_pixels=options.max_pixels,
    )  # fmt: skip


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
