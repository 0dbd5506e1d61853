"""LlamaIndex adapters: inheritance, equality with the core, batching, events, options, async, query engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.embedding import EmbeddingStartEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from qwen3_retrieval.llama_index import Qwen3Embedding, Qwen3Rerank
from texts import DOCUMENTS, QUERIES

TOL = 1e-5
QUERY = "What is the capital of China?"


class Collect(BaseEventHandler):
    events: list[Any] = []  # noqa: RUF012 (a pydantic field)

    @classmethod
    def class_name(cls) -> str:
        return "Collect"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def events() -> Any:
    handler = Collect(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


@pytest.fixture(scope="module")
def embed_model(embedding_path: Path) -> Qwen3Embedding:
    return Qwen3Embedding(model=str(embedding_path), device="cpu")


def nodes_with_scores() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"source": f"s{i}"}), score=0.1 * i)
        for i, t in enumerate(DOCUMENTS)
    ]


def make_rerank(reranker_path: Path, **kwargs: Any) -> Qwen3Rerank:
    return Qwen3Rerank(model=str(reranker_path), device="cpu", **kwargs)


def test_inheritance_and_class_names() -> None:
    assert BaseEmbedding.__name__ in [b.__name__ for b in Qwen3Embedding.__mro__]
    assert BaseNodePostprocessor.__name__ in [b.__name__ for b in Qwen3Rerank.__mro__]
    assert Qwen3Embedding.class_name() == "Qwen3Embedding"
    assert Qwen3Rerank.class_name() == "Qwen3Rerank"


def test_model_and_model_name_are_the_same(embedding_path: Path) -> None:
    assert Qwen3Embedding(model=str(embedding_path)).model_name == str(embedding_path)
    assert Qwen3Embedding(model_name=str(embedding_path)).embedder.model == str(embedding_path)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="differ"):
        Qwen3Embedding(model=str(embedding_path), model_name="other/model")
    core = Qwen3Embedder(embedding_path, device="cpu")
    assert Qwen3Embedding(embedder=core).model_name == core.model


def test_vectors_equal_the_core(embed_model: Qwen3Embedding, embedding_path: Path) -> None:
    core = Qwen3Embedder(embedding_path, device="cpu")
    query = embed_model.get_query_embedding(QUERIES[0])
    assert isinstance(query[0], float)
    np.testing.assert_allclose(query, core.embed_query(QUERIES[0]), atol=TOL)
    np.testing.assert_allclose(
        embed_model.get_text_embedding(DOCUMENTS[0]), core.embed_documents(DOCUMENTS[:1])[0], atol=TOL
    )
    np.testing.assert_allclose(
        embed_model.get_text_embedding_batch(DOCUMENTS), core.embed_documents(DOCUMENTS), atol=TOL
    )


def test_batches_go_to_the_core_whole(embedding_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Qwen3Embedding(model=str(embedding_path), device="cpu", embed_batch_size=4)
    calls: list[int] = []
    original = Qwen3Embedder.embed_documents

    def counting(self: Qwen3Embedder, texts: list[str]) -> Any:
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(Qwen3Embedder, "embed_documents", counting)
    model.get_text_embedding_batch(DOCUMENTS)
    assert calls == [4, 4, 2]


def test_embedding_events_are_not_doubled(embed_model: Qwen3Embedding, events: list[Any]) -> None:
    embed_model.get_query_embedding("q")
    embed_model.get_text_embedding_batch(DOCUMENTS[:3])
    assert sum(isinstance(e, EmbeddingStartEvent) for e in events) == 2


async def test_async_embeddings(embed_model: Qwen3Embedding) -> None:
    queries = await asyncio.gather(*(embed_model.aget_query_embedding(q) for q in QUERIES))
    texts = await embed_model.aget_text_embedding_batch(DOCUMENTS)
    for q, vector in zip(QUERIES, queries):
        np.testing.assert_allclose(vector, embed_model.get_query_embedding(q), atol=TOL)
    np.testing.assert_allclose(texts, embed_model.get_text_embedding_batch(DOCUMENTS), atol=TOL)


def test_rerank_equals_core_on_embed_mode_content(reranker_path: Path) -> None:
    nodes = nodes_with_scores()
    contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert contents[0] != DOCUMENTS[0]  # metadata is part of what is scored, as in LlamaIndex's rerankers
    expected = Qwen3Reranker(reranker_path, device="cpu").rank(QUERY, contents)
    out = make_rerank(reranker_path, top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == [f"n{i}" for i, _ in expected]
    for node, (_, score) in zip(out, expected):
        assert type(node.score) is float and abs(node.score - score) < TOL
    assert [n.score for n in nodes] == [0.1 * i for i in range(len(DOCUMENTS))]  # inputs untouched
    assert all(a is not b for a, b in zip(out, nodes))


def test_top_n_threshold_and_retrieval_score(reranker_path: Path) -> None:
    nodes = nodes_with_scores()
    assert len(make_rerank(reranker_path).postprocess_nodes(nodes, query_str=QUERY)) == 3
    all_nodes = make_rerank(reranker_path, top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    threshold = (all_nodes[1].score + all_nodes[2].score) / 2  # type: ignore[operator]
    kept = make_rerank(reranker_path, top_n=None, score_threshold=threshold).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in kept] == [n.node.node_id for n in all_nodes[:2]]
    keep = make_rerank(reranker_path, top_n=None, keep_retrieval_score=True).postprocess_nodes(nodes, query_str=QUERY)
    for node in keep:
        index = int(node.node.node_id[1:])
        assert node.node.metadata["retrieval_score"] == 0.1 * index
    assert all("retrieval_score" not in n.node.metadata for n in nodes)


def test_rerank_events_and_callback(reranker_path: Path, events: list[Any]) -> None:
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    debug = LlamaDebugHandler()
    rerank = make_rerank(reranker_path, callback_manager=CallbackManager([debug]))
    out = rerank.postprocess_nodes(nodes_with_scores(), query_str=QUERY)
    assert [type(e) for e in events if isinstance(e, (ReRankStartEvent, ReRankEndEvent))] == [
        ReRankStartEvent,
        ReRankEndEvent,
    ]
    end = next(e for e in events if isinstance(e, ReRankEndEvent))
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in out]
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 1
    events.clear()
    assert rerank.postprocess_nodes([], query_str=QUERY) == []
    assert [type(e) for e in events if isinstance(e, (ReRankStartEvent, ReRankEndEvent))] == [
        ReRankStartEvent,
        ReRankEndEvent,
    ]


def test_bad_input(reranker_path: Path) -> None:
    rerank = Qwen3Rerank(model=str(reranker_path), device="cpu", max_length=98)
    with pytest.raises(ValueError, match="needs the query"):
        rerank.postprocess_nodes(nodes_with_scores())
    with pytest.raises(ValueError, match="query is empty"):
        rerank.postprocess_nodes(nodes_with_scores(), query_bundle=QueryBundle(query_str=""))
    assert rerank.postprocess_nodes([], query_str=QUERY) == []
    assert rerank.reranker.loaded is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        make_rerank(reranker_path, top_n=0)


async def test_async_rerank(reranker_path: Path) -> None:
    rerank = make_rerank(reranker_path)
    results = await asyncio.gather(*(rerank.apostprocess_nodes(nodes_with_scores(), query_str=QUERY) for _ in range(4)))
    expected = [n.node.node_id for n in rerank.postprocess_nodes(nodes_with_scores(), query_str=QUERY)]
    assert all([n.node.node_id for n in r] == expected for r in results)


def test_query_engine_with_mock_llm(embed_model: Qwen3Embedding, reranker_path: Path) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms import MockLLM

    passages = [t for t in DOCUMENTS if t.strip()]
    index = VectorStoreIndex.from_documents(
        [Document(text=t, id_=f"d{i}") for i, t in enumerate(passages)], embed_model=embed_model
    )
    retriever = index.as_retriever(similarity_top_k=6)
    candidates = retriever.retrieve(QUERY)
    contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in candidates]
    expected = [
        candidates[i].node.get_content()
        for i, _ in Qwen3Reranker(reranker_path, device="cpu").rank(QUERY, contents, top_n=3)
    ]
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=6, node_postprocessors=[make_rerank(reranker_path, top_n=3)]
    )
    response = engine.query(QUERY)
    assert [n.node.get_content() for n in response.source_nodes] == expected
