"""The random checkpoints' tokenizer: a Qwen-style byte-level BPE trained, offline, on a generated corpus."""

from __future__ import annotations

import json
import os
import random
from importlib.resources import files
from pathlib import Path
from typing import Any

from qwen3_retrieval.prompts import DEFAULT_INSTRUCTION, EOS_TOKEN, NO_TOKEN, YES_TOKEN

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
"""Added tokens marked special, as in the Qwen3 tokenizers."""
MARKUP_TOKENS = ["<think>", "</think>"]
"""Added tokens that Qwen3 tokenizers do not mark special (transformers' ``split_special_tokens`` keeps them)."""
SPECIAL_TOKENS = CONTROL_TOKENS + MARKUP_TOKENS
VISION_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
"""The Qwen3-VL tokenizers' vision markers, all special (so ``all_special_ids`` holds them, as it does there)."""

# Qwen2/Qwen3 pre-tokenizer: merges never cross these boundaries.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

WORDS = [
    word
    for line in files(__package__).joinpath("words.txt").read_text(encoding="utf-8").splitlines()
    if not line.startswith("#")
    for word in line.split()
]
"""The corpus' vocabulary (``words.txt``): its order, with the seed, fixes the trained tokenizer."""


def _corpus(seed: int = 0, roles: bool = False) -> list[str]:
    rng = random.Random(seed)
    lines = [
        DEFAULT_INSTRUCTION,
        "What is the capital of China?",
        "The capital of China is Beijing.",
        "Gravity is a force that attracts two bodies towards each other.",
        'Note that the answer can only be "yes" or "no".',
        "<Instruct>: \n<Query>: \n<Document>: ",
        "Instruct: \nQuery:",
    ]
    for _ in range(4000):
        words = rng.choices(WORDS, k=rng.randint(4, 16))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":", ";"]))
        lines.append(f"{rng.randint(0, 9999)} {rng.choice(WORDS)}\n")
    lines += ["yes", "no"] * 500
    if roles:
        lines += ["system", "user", "assistant"] * 500
    return lines


def build_tokenizer(
    folder: str | os.PathLike[str], *, append_eos: bool = True, vocab_size: int = 2000, vision: bool = False
) -> Path:
    """Train a Qwen-style byte-level BPE tokenizer and save it as ``tokenizer.json`` + ``tokenizer_config.json``.

    Args:
        folder: Where to write the files (created if needed).
        append_eos: Add the post-processor that appends ``<|endoftext|>`` to every sequence, as the current
            Qwen3-Embedding tokenizers do. Early embedding revisions and the reranker tokenizers have none.
        vocab_size: Target vocabulary size, special tokens included.
        vision: Also add the Qwen3-VL vision markers (:data:`VISION_TOKENS`) as special tokens.

    Returns:
        The folder.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    added = len(SPECIAL_TOKENS) + (len(VISION_TOKENS) if vision else 0)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - added,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The VL checkpoints' role names are single tokens, as in Qwen's vocabulary: the official VL reranker's
    # truncation keeps a prompt's last 5 tokens, which are then exactly "<|im_end|>\n<|im_start|>assistant\n".
    tokenizer.train_from_iterator(_corpus(roles=vision), trainer)
    # As in Qwen's tokenizers, the added tokens get the ids after the BPE vocabulary, and only the <|...|>
    # control tokens are marked special.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    if vision:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    for token in (YES_TOKEN, NO_TOKEN, *(("assistant",) if vision else ())):
        if tokenizer.token_to_id(token) is None:
            raise RuntimeError(f"the trained tokenizer has no single token {token!r}; raise vocab_size")
    if append_eos:
        eos_id = tokenizer.token_to_id(EOS_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS_TOKEN}", pair=f"$A $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
        )
    tokenizer.save(str(out / "tokenizer.json"))
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "add_bos_token": False,
            "eos_token": "<|im_end|>",
            "pad_token": EOS_TOKEN,
            "unk_token": None,
            "model_max_length": 131072,
            "clean_up_tokenization_spaces": False,
        },
    )
    return out


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as the indented JSON that checkpoint folders hold."""
    path.write_text(json.dumps(value, indent=2) + "\n")
