"""Random-weight Qwen3-VL-Embedding and Qwen3-VL-Reranker checkpoints, tiny, built offline for tests."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from qwen3_retrieval.testing.checkpoints import randomize_weights, save_checkpoint, spread_yes_no
from qwen3_retrieval.testing.tokenizer import VISION_TOKENS, build_tokenizer, write_json

VLKind = Literal["vl-embedding", "vl-reranker"]
VLShape = Literal["tiny", "2B"]

# The stock Qwen3-VL chat template's behaviour for what the retrieval models send (facts file, section 2.3),
# written out here on its own: each turn is ``<|im_start|>{role}\n{content}<|im_end|>\n``; a content list
# renders images and videos as their three vision markers and texts as they are, with no separator; the
# generation prompt is ``<|im_start|>assistant\n``. Tests render prompts through it with transformers, as the
# official code does, and compare with the ids our core builds without it.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' or 'image' in item -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' or 'video' in item -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}{{ item.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Small enough to build in a second, with every part the real models have: a vision tower with deepstack
# layers, interleaved M-RoPE (sections summing to half the head size) and the real patch, merge and temporal
# sizes, so image token counts are the real ones.
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [6, 5, 5],
                        "mrope_interleaved": True},
}  # fmt: skip
VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 4,
    "intermediate_size": 64,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": 64,
    "num_position_embeddings": 64,
    "deepstack_visual_indexes": [0, 1],
}
# Qwen3-VL-2B (speed work): the text model as the research file gives it (GGUF metadata of the 2B reranker), the
# vision tower as third-party ports of Qwen3-VL-2B-Instruct's config list it (depth 24, width 1024, deepstack
# 5/11/17); the vocabulary keeps its real size, though the tokenizer uses its first ids only.
VL_SHAPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (TEXT_CONFIG, VISION_CONFIG),
    "2B": (
        {**TEXT_CONFIG, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
         "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
         "rope_parameters": {**TEXT_CONFIG["rope_parameters"], "mrope_section": [24, 20, 20]}},
        {**VISION_CONFIG, "depth": 24, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 4096,
         "out_hidden_size": 2048, "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]},
    ),
}  # fmt: skip
_STD = {"tiny": 0.1, "2B": 0.02}
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 4096, "longest_edge": 1843200},
}


def make_vl_checkpoint(
    folder: str | os.PathLike[str],
    *,
    kind: VLKind = "vl-embedding",
    shape: VLShape = "tiny",
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight Qwen3-VL retrieval checkpoint: tokenizer, processor files and weights.

    Both kinds are ``Qwen3VLForConditionalGeneration`` with a tied head, as the published checkpoints declare.
    The reranker's ``yes`` and ``no`` head rows are scaled so that its scores spread over (0, 1).

    Args:
        folder: Where to write it.
        kind: ``"vl-embedding"`` or ``"vl-reranker"``.
        shape: ``"tiny"`` (a second to build, for tests) or ``"2B"`` (Qwen3-VL-2B's shape, for speed work).
        seed: Seed of the random weights.
        dtype: dtype of the saved weights.

    Returns:
        The folder, loadable by :class:`qwen3_retrieval.Qwen3VLEmbedder` / :class:`~qwen3_retrieval.Qwen3VLReranker`
        and by transformers' ``Qwen3VLModel`` with a ``Qwen2VLImageProcessorPil``.
    """
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    if kind not in ("vl-embedding", "vl-reranker"):
        raise ValueError(f"unknown kind {kind!r}; use 'vl-embedding' or 'vl-reranker'")
    if shape not in VL_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {sorted(VL_SHAPES)}")
    text, vision = VL_SHAPES[shape]
    out = build_tokenizer(folder, append_eos=False, vision=True)
    spec = json.loads((out / "tokenizer.json").read_text())
    ids = {token["content"]: token["id"] for token in spec["added_tokens"]}
    vocab = len(spec["model"]["vocab"]) + len(spec["added_tokens"])
    config = Qwen3VLConfig(
        # The published configs say it twice, at the top and in text_config (facts file, section 4.2); vLLM
        # reads the text config's to tie the LM head whose yes/no rows the reranker's score is made from, and
        # transformers 5 does not copy the top-level one down.
        text_config={"vocab_size": vocab, **text, "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": True},
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    randomize_weights(model, std=_STD[shape], seed=seed)  # RMSNorm and LayerNorm gains stay at 1
    if kind == "vl-reranker":
        spread_yes_no(model, out, seed=seed)
    save_checkpoint(model.to(getattr(torch, dtype)), out)
    (out / "chat_template.jinja").write_text(QWEN3_VL_CHAT_TEMPLATE)
    write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["processor_class"] = "Qwen3VLProcessor"
    # As the Qwen-VL tokenizers declare them, so that ``all_special_ids`` (which the official reranker's
    # truncation keeps) holds the control and vision markers.
    tokenizer_config["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>", *VISION_TOKENS]
    write_json(out / "tokenizer_config.json", tokenizer_config)
    return out


@functools.cache
def tiny_vl_checkpoint(kind: VLKind) -> Path:
    """Return a tiny VL checkpoint of ``kind``, built once per process in a temporary folder."""
    return make_vl_checkpoint(Path(tempfile.mkdtemp(prefix=f"qwen3-{kind}-")), kind=kind)
