"""Our Qwen3-VL embeddings and reranker scores against sentence-transformers (an independent implementation).

sentence-transformers loads Qwen3-VL through transformers' processor classes, which need torchvision; the test
environment has none, so the reference runs in an environment of its own: set ``QWEN3_VL_PYTHON`` to its python
(``bash .ci/run`` builds it; docs/contributing.md shows how). Without it these tests are skipped.

The reference (``st_vl_reference.py``, run as a subprocess) builds the stacks the sentence-transformers ports of
the models use: ``Transformer`` + ``lasttoken`` ``Pooling`` + ``Normalize``, and a causal-LM ``Transformer`` +
``LogitScore(yes, no)``. Images here have sides that are multiples of 32 within the official pixel bounds: the
official code resizes with PIL before the processor and sentence-transformers lets the processor resize with
torchvision, so only sizes that both leave alone compare exactly (research file qwen3-vl.md, section 5.1).
RGBA images are not compared either: the official code lays them on white before the processor sees them, and
transformers' processor converts them its own way (measured: up to 0.07 apart on a random RGBA image).
Videos are not compared: transformers 5's ``Qwen3VLProcessor`` replaces only the ``<|video_pad|>`` of a video's
``<|vision_start|><|video_pad|><|vision_end|>`` with its timestamped frames, which leaves an extra pair of vision
markers around them; the official code (transformers 4.57, as its lock pins) replaces all three.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3_retrieval.testing import random_image as picture

VL_PYTHON = os.environ.get("QWEN3_VL_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not VL_PYTHON,
    reason="QWEN3_VL_PYTHON is not set: no environment with sentence-transformers and torchvision (bash .ci/run)",
)
REFERENCE = Path(__file__).with_name("st_vl_reference.py")
TOL = 1e-5


EMBED_INPUTS: list[dict[str, Any]] = [
    {"text": "A woman playing with her dog on a beach at sunset."},
    {"image": picture(96, 64, 0)},
    {"text": "A cat.", "image": picture(64, 64, 1)},
    {"image": [picture(64, 128, 2), picture(96, 96, 3)], "text": ["two ", "texts"]},  # several images and texts
    {"text": "plain", "instruction": "Retrieve images relevant to the query"},  # gets "."
    {"text": "with a question?", "instruction": "Find the matching photo?"},  # punctuation: no "."
    {"image": picture(128, 64, 5, "L")},  # grey to RGB
    {},  # empty: "NULL"
]
QUERY = {"text": "A woman playing with her dog on a beach at sunset."}
DOCUMENTS: list[dict[str, Any]] = [
    {"text": "A woman shares a joyful moment with her golden retriever."},
    {"image": picture(128, 96, 10)},
    {"text": "caption", "image": picture(64, 64, 11)},
    {},
    {"image": [picture(64, 64, 12), picture(96, 64, 13)], "text": ["a", "b"]},
]
RERANK_CASES = [
    (None, QUERY, DOCUMENTS),
    ("Find the same scene", {"image": picture(96, 96, 14), "text": "this"}, DOCUMENTS[:3]),
]


@pytest.fixture(scope="module")
def reference(vl_embedding: Path, vl_reranker: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """sentence-transformers' vectors and scores for the inputs above, computed in the torchvision environment."""
    folder = tmp_path_factory.mktemp("st-reference")
    cases = {
        "embedding": str(vl_embedding),
        "reranker": str(vl_reranker),
        "embed": EMBED_INPUTS,
        "rerank": RERANK_CASES,
    }
    (folder / "cases.pkl").write_bytes(pickle.dumps(cases))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [VL_PYTHON, str(REFERENCE), str(folder / "cases.pkl"), str(folder / "out.npz")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(folder / "out.npz") as out:
        return {key: out[key] for key in out.files}


def test_embeddings_equal_sentence_transformers(vl_embedding: Path, reference: dict[str, Any]) -> None:
    ours = Qwen3VLEmbedder(vl_embedding, batch_tokens=300).embed(EMBED_INPUTS)  # several batches
    expected = reference["embed"]
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=TOL)
    # Not a test that cannot fail: the inputs give different vectors.
    assert min(np.linalg.norm(ours[i] - ours[j]) for i in range(len(ours)) for j in range(i)) > 1e-3


def test_reranker_scores_equal_cross_encoder(vl_reranker: Path, reference: dict[str, Any]) -> None:
    reranker = Qwen3VLReranker(vl_reranker, batch_tokens=200)
    for i, (instruction, query, documents) in enumerate(RERANK_CASES):
        expected = reference[f"rerank_{i}"]
        ours = reranker.score(query, documents, instruction) if instruction else reranker.score(query, documents)
        np.testing.assert_allclose(ours, expected, atol=TOL)
        assert max(expected) - min(expected) > 0.01  # the documents score differently
