"""sentence-transformers' Qwen3-VL embeddings and reranker scores, for ``test_sentence_transformers_vl.py``.

Run by that test with the python of an environment that has sentence-transformers (>= 5.4) and torchvision
(``QWEN3_VL_PYTHON``); it imports nothing from our package. Usage::

    python st_vl_reference.py CASES.pkl OUT.npz

``CASES.pkl`` holds ``{"embedding": folder, "reranker": folder, "embed": [inputs], "rerank": [(instruction,
query, documents)]}``, where an input is a dict of ``text`` / ``image`` (one or a list; images are PIL) and an
optional ``instruction`` (videos are left out: see the test's docstring). ``OUT.npz`` gets ``embed`` (one row
per input) and ``rerank_<i>`` (one score per document of case i).

The models are the stacks the sentence-transformers ports of Qwen3-VL-Embedding / -Reranker use (research file
qwen3-vl.md, section 5.1): a feature-extraction ``Transformer`` (``AutoModel``: ``Qwen3VLModel``, post-norm
``last_hidden_state``), ``lasttoken`` ``Pooling`` and ``Normalize``; a causal-LM ``Transformer`` and
``LogitScore(yes, no)``, whose raw ``logit_yes - logit_no`` gets the sigmoid of the official score. What stays
here is the official code's message layout (QwenLM/Qwen3-VL-Embedding ``format_model_input``): content in the
order images, texts; the instruction as the system message ("." appended unless it ends in punctuation); "NULL"
for an empty input; the reranker's ``<Instruct>: ``/``<Query>:``/``\\n<Document>:`` user message under its fixed
system text. sentence-transformers renders the messages with the checkpoint's chat template, runs the
checkpoint's processor and the model, pools and scores.
"""

from __future__ import annotations

import pickle
import sys
import unicodedata
from typing import Any

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.cross_encoder.modules import LogitScore
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

EMBED_DEFAULT = "Represent the user's input."
RERANK_DEFAULT = "Given a search query, retrieve relevant candidates that answer the query."
JUDGE = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the "
    'answer can only be "yes" or "no".'
)
MODEL_KWARGS = {"dtype": torch.float32, "attn_implementation": "eager"}
# The official code renders with ``add_generation_prompt=True``: the sequence ends ``<|im_start|>assistant\n``.
PROCESSING = {"chat_template": {"add_generation_prompt": True}}
SIGMOID = torch.nn.Sigmoid()


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def content(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The official content order (images, then texts), as sentence-transformers' typed content items."""
    parts = [{"type": "image", "image": image} for image in as_list(item.get("image", []))]
    parts += [{"type": "text", "text": text} for text in as_list(item.get("text", []))]
    return parts


def instruction(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        return EMBED_DEFAULT
    return text if unicodedata.category(text[-1]).startswith("P") else text + "."


def typed(item: dict[str, Any]) -> dict[str, Any]:
    """One input as sentence-transformers' typed dict, keys in the official order (images, then texts)."""
    out = {key: item[key] for key in ("image", "text") if key in item}
    return out or {"text": "NULL"}


def embedding_model(folder: str) -> SentenceTransformer:
    """Transformer (``Qwen3VLModel``) + last-token pooling + L2 normalisation, as the hub port declares."""
    transformer = Transformer(
        folder,
        transformer_task="feature-extraction",
        model_kwargs=MODEL_KWARGS,
        processing_kwargs=PROCESSING,
    )
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def reranker_model(folder: str) -> CrossEncoder:
    """The causal LM + ``LogitScore(yes, no)``: ``logit_yes - logit_no`` at the last token."""
    transformer = Transformer(
        folder, transformer_task="any-to-any", model_kwargs=MODEL_KWARGS, processing_kwargs=PROCESSING
    )
    vocab = transformer.tokenizer.get_vocab()
    return CrossEncoder(modules=[transformer, LogitScore(vocab["yes"], vocab["no"])], device="cpu")


def rerank_messages(
    instruct: str | None, query: dict[str, Any], documents: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """The official reranker's conversation for each (query, document) pair."""
    conversations = []
    for document in documents:
        user = [
            {"type": "text", "text": "<Instruct>: " + (instruct or RERANK_DEFAULT)},
            {"type": "text", "text": "<Query>:"},
            *(content(query) or [{"type": "text", "text": "NULL"}]),
            {"type": "text", "text": "\n<Document>:"},
            *(content(document) or [{"type": "text", "text": "NULL"}]),
        ]
        conversations.append(
            [{"role": "system", "content": [{"type": "text", "text": JUDGE}]}, {"role": "user", "content": user}]
        )
    return conversations


def embed(folder: str, inputs: list[dict[str, Any]]) -> np.ndarray:
    model = embedding_model(folder)
    # One call per input: sentence-transformers' ``prompt`` (the instruction) becomes the system message.
    return np.stack([model.encode([typed(item)], prompt=instruction(item.get("instruction")))[0] for item in inputs])


def rerank(folder: str, cases: list[tuple[str | None, dict[str, Any], list[dict[str, Any]]]]) -> list[np.ndarray]:
    model = reranker_model(folder)
    # LogitScore gives logit_yes - logit_no; the official score is its sigmoid.
    return [
        model.predict(rerank_messages(instruct, query, documents), batch_size=4, activation_fn=SIGMOID)
        for instruct, query, documents in cases
    ]


def main() -> None:
    cases_path, out_path = sys.argv[1:3]
    with open(cases_path, "rb") as handle:
        cases = pickle.load(handle)
    out: dict[str, np.ndarray] = {}
    if cases.get("embed"):
        out["embed"] = embed(cases["embedding"], cases["embed"])
    for i, scores in enumerate(rerank(cases["reranker"], cases.get("rerank", []))):
        out[f"rerank_{i}"] = np.asarray(scores)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main()
