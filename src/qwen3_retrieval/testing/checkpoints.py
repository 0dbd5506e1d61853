"""Random-weight Qwen3 checkpoints, tiny (fast tests) or in the real 0.6B shape (speed and memory work)."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from qwen3_retrieval.prompts import DEFAULT_INSTRUCTION, EOS_TOKEN, NO_TOKEN, YES_TOKEN
from qwen3_retrieval.testing.tokenizer import build_tokenizer, write_json

Shape = Literal["tiny", "0.6B-4L", "0.6B"]
RerankerKind = Literal["causal-lm", "seq-cls"]
TinyKind = Literal["embedding", "embedding-no-eos", "reranker", "reranker-seq-cls"]

SHAPES: dict[str, dict[str, Any]] = {
    # head_dim 32: the smallest that vLLM's CPU attention runs, so the same tiny checkpoints serve in vLLM.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 32768,
    },
    # Qwen3-Embedding-0.6B / Qwen3-Reranker-0.6B (facts file, section 1.7).
    # The real 0.6B width with 4 layers: memory measurements where keys and values must weigh what they weigh.
    "0.6B-4L": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 32768,
    },
    "0.6B": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 32768,
        "vocab_size": 151669,
    },
}

# The role-based chat template that 2026 snapshots of the Qwen3-Reranker repos ship (facts file, section 2.5):
# the instruction comes in the "system" role, the pair in "query" and "document". sentence-transformers'
# CrossEncoder renders pairs through it. Written out on its own (not from qwen3_retrieval.prompts) so that
# comparing CrossEncoder with our reranker checks our prompt against an independent copy. Jinja drops a
# template's final newline, hence the explicit "\n\n" after </think>.
RERANKER_CHAT_TEMPLATE = """{%- macro text(role) -%}
{%- set found = messages | selectattr("role", "eq", role) | map(attribute="content") | first -%}
{%- if found is string -%}{{ found }}{%- elif found -%}{{ found | map(attribute="text") | join("") }}{%- endif -%}
{%- endmacro -%}
{%- set judge = "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    ~ 'Note that the answer can only be "yes" or "no".' -%}
{%- set default_instruction = "Given a web search query, retrieve relevant passages that answer the query" -%}
<|im_start|>system
{{ judge }}<|im_end|>
<|im_start|>user
<Instruct>: {{ text("system") or default_instruction }}
<Query>: {{ text("query") }}
<Document>: {{ text("document") }}<|im_end|>
<|im_start|>assistant
<think>

</think>{{ "\\n\\n" }}
"""

# Weight spread. Tiny models get more than the default 0.02 so that the contextual part of a pooled state is
# large enough for a wrong prompt, token or padding to move results far beyond test tolerances.
_STD = {"tiny": 0.1, "0.6B-4L": 0.02, "0.6B": 0.02}


def make_embedding_checkpoint(
    folder: str | os.PathLike[str],
    *,
    shape: Shape = "tiny",
    append_eos: bool = True,
    seed: int = 0,
    dtype: str = "float32",
    vocab_rows: int | None = None,
) -> Path:
    """Write a random-weight Qwen3-Embedding checkpoint (tokenizer, weights, sentence-transformers files).

    Args:
        folder: Where to write it.
        shape: ``"tiny"`` (seconds to build, for tests) or ``"0.6B"`` (the real model's shape, for speed work).
        append_eos: Whether the tokenizer appends ``<|endoftext|>`` itself (see :func:`build_tokenizer`).
        seed: Seed of the random weights; the same seed gives the same weights.
        dtype: dtype of the saved weights.
        vocab_rows: Rows of the embedding table; None gives every token id a row. Qwen3-Embedding-4B/8B have
            fewer rows than their tokenizers have ids (``<think>`` and ``</think>`` have none): pass
            ``vocab_rows=n_ids - 2`` to reproduce that.

    Returns:
        The folder, loadable by :class:`qwen3_retrieval.Qwen3Embedder` and by sentence-transformers.
    """
    import torch
    from transformers import Qwen3Model

    out = build_tokenizer(folder, append_eos=append_eos)
    config = _config(out, shape)
    if vocab_rows is not None:
        config.vocab_size = vocab_rows
    torch.manual_seed(seed)
    model = Qwen3Model(config)
    randomize_weights(model, std=_STD[shape], seed=seed)
    save_checkpoint(model.to(getattr(torch, dtype)), out)
    _set_architecture(out, "Qwen3ForCausalLM")  # as in the published embedding checkpoints
    hidden = config.hidden_size
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    pooling = {f"pooling_mode_{m}": False for m in ("cls_token", "mean_tokens", "max_tokens")}
    pooling.update({"word_embedding_dimension": hidden, "pooling_mode_lasttoken": True, "include_prompt": True})
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    write_json(out / "1_Pooling" / "config.json", pooling)
    write_json(
        out / "config_sentence_transformers.json",
        {
            "prompts": {"query": f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    return out


def make_reranker_checkpoint(
    folder: str | os.PathLike[str],
    *,
    kind: RerankerKind = "causal-lm",
    shape: Shape = "tiny",
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight Qwen3-Reranker checkpoint.

    Args:
        folder: Where to write it.
        kind: ``"causal-lm"`` (as published: ``Qwen3ForCausalLM``, tied head) or ``"seq-cls"`` (the converted
            single-logit ``Qwen3ForSequenceClassification`` whose weight is ``w_yes - w_no``). For the same
            seed and shape the two give the same scores.
        shape: ``"tiny"`` or ``"0.6B"``.
        seed: Seed of the random weights.
        dtype: dtype of the saved weights.

    Returns:
        The folder, loadable by :class:`qwen3_retrieval.Qwen3Reranker`.
    """
    import torch
    from transformers import Qwen3ForCausalLM, Qwen3ForSequenceClassification

    out = build_tokenizer(folder, append_eos=False)
    config = _config(out, shape)
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    causal = Qwen3ForCausalLM(config)
    randomize_weights(causal, std=_STD[shape], seed=seed)
    tokenizer_vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    yes_id, no_id = tokenizer_vocab[YES_TOKEN], tokenizer_vocab[NO_TOKEN]
    spread_yes_no(causal, out, seed=seed)
    if kind == "causal-lm":
        save_checkpoint(causal.to(getattr(torch, dtype)), out)
        (out / "chat_template.jinja").write_text(RERANKER_CHAT_TEMPLATE)
        return out
    if kind != "seq-cls":
        raise ValueError(f"unknown reranker kind {kind!r}; use 'causal-lm' or 'seq-cls'")
    config.num_labels = 1
    config.tie_word_embeddings = False
    classifier = Qwen3ForSequenceClassification(config)
    with torch.no_grad():
        classifier.model.load_state_dict(causal.model.state_dict())
        head = causal.get_output_embeddings().weight
        classifier.score.weight.copy_((head[yes_id].float() - head[no_id].float())[None])
    save_checkpoint(classifier.to(getattr(torch, dtype)), out)
    return out


@functools.cache
def tiny_checkpoint(kind: TinyKind) -> Path:
    """Return a tiny checkpoint of ``kind``, built once per process in a temporary folder.

    Handy where a fixture cannot reach, e.g. the ``embedding_model_params`` property of LangChain's standard
    tests. ``kind`` is ``"embedding"``, ``"embedding-no-eos"``, ``"reranker"`` or ``"reranker-seq-cls"``.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"qwen3-{kind}-"))
    if kind == "embedding":
        return make_embedding_checkpoint(folder)
    if kind == "embedding-no-eos":
        return make_embedding_checkpoint(folder, append_eos=False)
    if kind == "reranker":
        return make_reranker_checkpoint(folder)
    if kind == "reranker-seq-cls":
        return make_reranker_checkpoint(folder, kind="seq-cls")
    raise ValueError(f"unknown kind {kind!r}; use one of {TinyKind.__args__}")


def _config(folder: Path, shape: Shape) -> Any:
    from transformers import Qwen3Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {sorted(SHAPES)}")
    vocab = json.loads((folder / "tokenizer.json").read_text())
    n_tokens = len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])
    values = dict(SHAPES[shape])
    values.setdefault("vocab_size", n_tokens)
    eos_id = vocab["model"]["vocab"].get(EOS_TOKEN)
    if eos_id is None:
        eos_id = next(t["id"] for t in vocab["added_tokens"] if t["content"] == EOS_TOKEN)
    return Qwen3Config(  # type: ignore[call-arg]
        **values,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        attention_bias=False,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def spread_yes_no(model: Any, folder: Path, *, seed: int) -> None:
    """Redraw the head's ``yes`` and ``no`` rows so that P(yes) spreads over (0, 1) instead of sitting near 0.5."""
    import torch

    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    rows = model.get_output_embeddings().weight
    gen = torch.Generator().manual_seed(seed + 1)
    scale = 1.5 / rows.shape[1] ** 0.5
    with torch.no_grad():
        for token in (YES_TOKEN, NO_TOKEN):
            rows[vocab[token]] = torch.randn(rows.shape[1], generator=gen) * scale


def randomize_weights(model: Any, *, std: float, seed: int) -> None:
    """Fill every weight but the norms' gains with seeded normal noise of ``std``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                continue  # keep RMSNorm gains at 1, as trained models roughly have
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def save_checkpoint(model: Any, folder: Path) -> None:
    """Save ``model`` to ``folder`` without transformers' progress bars."""
    from qwen3_retrieval.loading import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(folder)


def _set_architecture(folder: Path, architecture: str) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = [architecture]
    write_json(path, config)
