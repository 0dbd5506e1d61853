"""What both frameworks' adapters promise: no silent disagreement with a passed core, dumps that rebuild the
same component, pickles without weights, the core's selection rules, and events that always pair up."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from texts import DOCUMENTS, QUERIES

TOL = 1e-6
QUERY = "What is the capital of China?"


def embedding_classes() -> list[Any]:
    from qwen3_retrieval.langchain import Qwen3Embeddings
    from qwen3_retrieval.llama_index import Qwen3Embedding

    return [Qwen3Embeddings, Qwen3Embedding]


def rerank_classes() -> list[Any]:
    from qwen3_retrieval.langchain import Qwen3Rerank as LangChainRerank
    from qwen3_retrieval.llama_index import Qwen3Rerank as LlamaIndexRerank

    return [LangChainRerank, LlamaIndexRerank]


def embed(component: Any) -> np.ndarray:
    if hasattr(component, "embed_documents"):
        return np.array(component.embed_documents(DOCUMENTS) + [component.embed_query(QUERIES[0])])
    return np.array(component.get_text_embedding_batch(DOCUMENTS) + [component.get_query_embedding(QUERIES[0])])


def scores(component: Any) -> list[float]:
    if hasattr(component, "compress_documents"):
        from langchain_core.documents import Document

        out = component.compress_documents([Document(page_content=d) for d in DOCUMENTS], QUERY)
        return [d.metadata["relevance_score"] for d in out]
    from llama_index.core.schema import NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(text=d)) for d in DOCUMENTS]
    return [n.score for n in component.postprocess_nodes(nodes, query_str=QUERY)]


@pytest.mark.parametrize(
    ("option", "value", "core_value"),
    [
        ("dimensions", 32, None),
        ("instruction", "Find facts", "Given a web search query, retrieve relevant passages that answer the query"),
        ("dtype", "bfloat16", "float32"),
        ("max_length", 64, 8192),
    ],
)
@pytest.mark.parametrize("index", [0, 1])
def test_options_that_disagree_with_a_passed_embedder_are_errors(
    embedding_path: Path, index: int, option: str, value: Any, core_value: Any
) -> None:
    core = Qwen3Embedder(embedding_path, device="cpu")
    with pytest.raises(ValueError, match=rf"{option}={value!r} here but embedder\.{option}={core_value!r}"):
        embedding_classes()[index](embedder=core, **{option: value})


@pytest.mark.parametrize("index", [0, 1])
def test_options_that_agree_with_a_passed_core_are_fine(embedding_path: Path, reranker_path: Path, index: int) -> None:
    core = Qwen3Embedder(embedding_path, device="cpu", dimensions=32, max_length=64)
    component = embedding_classes()[index](embedder=core, dimensions=32, device="cpu", dtype="fp32", max_length=64)
    assert component.embedder is core
    rr = Qwen3Reranker(reranker_path, device="cpu", instruction="Find facts")
    with pytest.raises(ValueError, match=r"instruction='Other' here but reranker\.instruction='Find facts'"):
        rerank_classes()[index](reranker=rr, instruction="Other")
    assert rerank_classes()[index](reranker=rr, instruction="Find facts", device="cpu").reranker is rr


@pytest.mark.parametrize("index", [0, 1])
def test_dump_rebuilds_a_component_with_the_same_vectors(embedding_path: Path, index: int) -> None:
    cls = embedding_classes()[index]
    core = Qwen3Embedder(embedding_path, device="cpu", dimensions=40, instruction="Find facts", max_length=12)
    original = cls(embedder=core)
    rebuilt = cls.from_dict(original.to_dict()) if hasattr(cls, "from_dict") else cls(**original.model_dump())
    assert rebuilt.embedder is not core
    np.testing.assert_allclose(embed(rebuilt), embed(original), atol=TOL)


@pytest.mark.parametrize("index", [0, 1])
def test_dump_rebuilds_a_reranker_with_the_same_scores(reranker_path: Path, index: int) -> None:
    cls = rerank_classes()[index]
    core = Qwen3Reranker(reranker_path, device="cpu", instruction="Find facts", max_length=100)
    original = cls(reranker=core, top_n=4)
    rebuilt = cls.from_dict(original.to_dict()) if hasattr(cls, "from_dict") else cls(**original.model_dump())
    assert rebuilt.reranker is not core
    assert len(scores(original)) == 4
    assert max(abs(a - b) for a, b in zip(scores(rebuilt), scores(original))) < TOL


@pytest.mark.parametrize("index", [0, 1])
def test_pickle_after_use_carries_no_weights_and_loads_lazily(
    embedding_path: Path, reranker_path: Path, index: int
) -> None:
    embeddings = embedding_classes()[index](model=str(embedding_path), device="cpu", dimensions=32)
    reranker = rerank_classes()[index](model=str(reranker_path), device="cpu", top_n=None)
    before = (embed(embeddings), scores(reranker))  # both loaded now
    core_size = len(pickle.dumps(Qwen3Embedder(embedding_path, device="cpu")))
    for component, check in ((embeddings, embed), (reranker, scores)):
        data = pickle.dumps(component)
        # The tiny model's weights alone are ~400 kB; an unloaded object pickles to a few kB.
        assert len(data) < 20 * core_size + 50_000, len(data)
        copy = pickle.loads(data)
        assert np.allclose(np.asarray(check(copy)), np.asarray(before[0] if check is embed else before[1]), atol=TOL)


def test_core_pickles_without_weights(embedding_path: Path, reranker_path: Path) -> None:
    embedder = Qwen3Embedder(embedding_path, device="cpu")
    fresh = len(pickle.dumps(embedder))
    vectors = embedder.embed_documents(DOCUMENTS)
    assert len(pickle.dumps(embedder)) == fresh
    np.testing.assert_allclose(pickle.loads(pickle.dumps(embedder)).embed_documents(DOCUMENTS), vectors, atol=TOL)
    reranker = Qwen3Reranker(reranker_path, device="cpu")
    fresh = len(pickle.dumps(reranker))
    reranker.score(QUERY, DOCUMENTS)
    assert len(pickle.dumps(reranker)) == fresh


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("threshold", [math.nan, -0.1, 1.5, float("inf")])
def test_threshold_must_be_a_probability(reranker_path: Path, index: int, threshold: float) -> None:
    with pytest.raises(ValueError, match="score_threshold must be from 0 to 1"):
        rerank_classes()[index](model=str(reranker_path), score_threshold=threshold)
    with pytest.raises(ValueError, match="score_threshold must be from 0 to 1"):
        Qwen3Reranker(reranker_path, device="cpu").rank(QUERY, DOCUMENTS, score_threshold=threshold)


def test_core_rank_applies_top_n_and_threshold(reranker_path: Path) -> None:
    reranker = Qwen3Reranker(reranker_path, device="cpu")
    all_scores = reranker.score(QUERY, DOCUMENTS)
    cut = sorted(all_scores, reverse=True)[4]
    kept = reranker.rank(QUERY, DOCUMENTS, score_threshold=cut)
    assert [i for i, _ in kept] == [i for i in sorted(range(len(DOCUMENTS)), key=lambda i: -all_scores[i])][:5]
    assert reranker.rank(QUERY, DOCUMENTS, top_n=2, score_threshold=cut) == kept[:2]
    assert reranker.rank(QUERY, DOCUMENTS, score_threshold=1.0) == []


def test_langchain_empty_instruction_means_no_instruction(reranker_path: Path) -> None:
    from qwen3_retrieval.langchain import Qwen3Rerank

    core = Qwen3Reranker(reranker_path, device="cpu")
    rerank = Qwen3Rerank(model=str(reranker_path), device="cpu")
    assert rerank.rerank(DOCUMENTS, QUERY, instruction="") == core.rank(QUERY, DOCUMENTS, instruction="")
    assert rerank.rerank(DOCUMENTS, QUERY, instruction="") != core.rank(QUERY, DOCUMENTS)
    assert rerank.rerank(DOCUMENTS, QUERY) == core.rank(QUERY, DOCUMENTS)


def test_langchain_accepts_model_name(embedding_path: Path, reranker_path: Path) -> None:
    from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank

    assert Qwen3Embeddings(model_name=str(embedding_path)).model == str(embedding_path)
    assert Qwen3Rerank(model_name=str(reranker_path)).model == str(reranker_path)
    with pytest.raises(ValueError, match="differ; pass only one of them"):
        Qwen3Rerank(model=str(reranker_path), model_name="other/model")


def test_llama_index_failed_rerank_leaves_no_unmatched_start_event(reranker_path: Path) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.schema import NodeWithScore, TextNode

    from qwen3_retrieval.llama_index import Qwen3Rerank

    seen: list[str] = []

    class Collect(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "Collect"

        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
                seen.append(type(event).__name__)

    handler = Collect()
    get_dispatcher().add_event_handler(handler)
    try:
        rerank = Qwen3Rerank(model=str(reranker_path), device="cpu", max_length=60)  # no room for a document
        with pytest.raises(ValueError, match="leaving no room"):
            rerank.postprocess_nodes([NodeWithScore(node=TextNode(text="doc"))], query_str=QUERY)
        with pytest.raises(ValueError, match="query is empty"):
            rerank.postprocess_nodes([NodeWithScore(node=TextNode(text="doc"))], query_str=" ")
    finally:
        get_dispatcher().event_handlers.remove(handler)
    assert seen == ["ReRankStartEvent", "ReRankEndEvent"]
