"""Texts far longer than ``max_length`` are read from a bounded prefix, with exactly the whole text's result.

The references tokenize each text whole (the model cards' ``truncation=True``); ours reads only as much of it
as can decide the tokens kept. The texts are the cases where a cut could change the tokens before it: one word
thousands of characters long, digits, whitespace runs, combining accents (NFC), emoji (several bytes a
character).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from test_embedder import model_card_embeddings
from test_reranker import CARD_INSTRUCTION, ModelCard, card_body

TOL = 1e-5


def long_texts() -> list[str]:
    rnd = random.Random(7)
    words = ["alpha", "beta", "über", "naïve", "北京", "🙂", "e\u0301", "  ", "\n\n", "1234567", "don't", "...", "\t"]
    return [
        " ".join(rnd.choice(words) for _ in range(8000)),
        "a" * 40000,
        "ab" * 20000,
        "9" * 40000,
        " " * 40000 + "x",
        "e" + "\u0301" * 40000,
        "🙂" * 20000,
        "=-" * 20000,
        "short text among long ones",
    ]


@pytest.mark.parametrize("max_length", [16, 64, 300])
def test_long_documents_embed_as_the_model_card_embeds_them(embedding_path: Path, max_length: int) -> None:
    texts = long_texts()
    ours = Qwen3Embedder(embedding_path, device="cpu", max_length=max_length).embed_documents(texts)
    np.testing.assert_allclose(ours, model_card_embeddings(embedding_path, texts, max_length), atol=TOL)


@pytest.mark.parametrize("max_length", [120, 400])
def test_long_documents_score_as_the_model_card_scores_them(reranker_path: Path, max_length: int) -> None:
    query = "What is the capital of China?"
    texts = long_texts()
    ours = Qwen3Reranker(reranker_path, device="cpu", max_length=max_length).score(query, texts)
    pairs = [card_body(CARD_INSTRUCTION, query, text) for text in texts]
    card = ModelCard(reranker_path, max_length=max_length).scores(pairs)
    np.testing.assert_allclose(ours, card, atol=TOL)


def test_a_query_longer_than_max_length_is_refused_without_reading_it_all(reranker_path: Path) -> None:
    reranker = Qwen3Reranker(reranker_path, device="cpu", max_length=200)
    with pytest.raises(ValueError, match=r"take at least \d+ tokens .* within max_length=200"):
        reranker.score("why " * 5_000_000, ["a document"])
