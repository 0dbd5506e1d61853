"""LangChain adapters: standard tests, equality with the core, documents, async paths, and chains."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank
from qwen3_retrieval.testing import tiny_checkpoint
from texts import DOCUMENTS, QUERIES

TOL = 1e-5
QUERY = "What is the capital of China?"


class _StandardParams:
    """What LangChain's standard suites construct: our class on the tiny checkpoint."""

    @property
    def embeddings_class(self) -> type[Qwen3Embeddings]:
        return Qwen3Embeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": str(tiny_checkpoint("embedding")), "device": "cpu"}


class TestQwen3EmbeddingsStandardUnit(_StandardParams, EmbeddingsUnitTests):
    pass


class TestQwen3EmbeddingsStandardIntegration(_StandardParams, EmbeddingsIntegrationTests):
    pass


@pytest.fixture(scope="module")
def embeddings(embedding_path: Path) -> Qwen3Embeddings:
    return Qwen3Embeddings(model=str(embedding_path), device="cpu")


@pytest.fixture(scope="module")
def core_reranker(reranker_path: Path) -> Qwen3Reranker:
    return Qwen3Reranker(reranker_path, device="cpu")


@pytest.fixture
def docs() -> list[Document]:
    return [
        Document(page_content=text, id=f"doc-{i}", metadata={"source": f"s{i}.md", "nested": {"n": i}})
        for i, text in enumerate(DOCUMENTS)
    ]


# --- Qwen3Embeddings -----------------------------------------------------------------------------------------


def test_is_an_embeddings(embeddings: Qwen3Embeddings) -> None:
    assert isinstance(embeddings, Embeddings)


def test_vectors_equal_the_core(embeddings: Qwen3Embeddings, embedding_path: Path) -> None:
    core = Qwen3Embedder(embedding_path, device="cpu")
    documents = embeddings.embed_documents(DOCUMENTS)
    assert all(isinstance(x, float) for row in documents for x in row)
    np.testing.assert_allclose(np.array(documents), core.embed_documents(DOCUMENTS), atol=TOL)
    query = embeddings.embed_query(QUERIES[0])
    np.testing.assert_allclose(np.array(query), core.embed_query(QUERIES[0]), atol=TOL)
    # The query instruction is applied: a query is not embedded like the same text as a document.
    assert np.abs(np.array(query) - np.array(embeddings.embed_documents([QUERIES[0]])[0])).max() > 1e-3


def test_options_reach_the_core(embedding_path: Path) -> None:
    task = "Retrieve answers"
    small = Qwen3Embeddings(model=str(embedding_path), device="cpu", dimensions=32, instruction=task)
    core = Qwen3Embedder(embedding_path, device="cpu", dimensions=32)
    assert len(small.embed_query("x")) == 32
    np.testing.assert_allclose(small.embed_query("x"), core.embed_query("x", instruction=task), atol=TOL)


def test_construction_loads_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "not-yet"
    empty.mkdir()
    embeddings = Qwen3Embeddings(model=str(empty))
    assert embeddings.embedder is not None and embeddings.embedder.loaded is None


def test_shares_an_existing_embedder(embedding_path: Path) -> None:
    core = Qwen3Embedder(embedding_path, device="cpu")
    embeddings = Qwen3Embeddings(embedder=core)
    assert embeddings.embedder is core
    assert embeddings.model == core.model
    with pytest.raises(ValueError, match="instance of Qwen3Embedder"):
        Qwen3Embeddings(embedder="nope")
    with pytest.raises(ValueError, match=r"model='other/model' here but embedder\.model="):
        Qwen3Embeddings(model="other/model", embedder=core)


def test_unknown_fields_and_bad_options_are_rejected(embedding_path: Path) -> None:
    with pytest.raises(ValueError, match="extra"):
        Qwen3Embeddings(model=str(embedding_path), modle="x")
    with pytest.raises(ValueError, match="differ; pass only one of them"):
        Qwen3Embeddings(model=str(embedding_path), model_name="x")
    with pytest.raises(ValueError, match="dimensions must be at least 32"):
        Qwen3Embeddings(model=str(embedding_path), dimensions=8)


async def test_async_embeddings_do_not_block_the_loop(embeddings: Qwen3Embeddings) -> None:
    expected = [embeddings.embed_query(q) for q in QUERIES]
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(embeddings.aembed_query(QUERIES[i % 4]) for i in range(32)))
    documents = await embeddings.aembed_documents(DOCUMENTS)
    done.set()
    await tick_task
    assert ticks > 32  # the loop kept running while the model worked in threads
    for i, vector in enumerate(results):
        np.testing.assert_allclose(vector, expected[i % 4], atol=TOL)
    np.testing.assert_allclose(documents, embeddings.embed_documents(DOCUMENTS), atol=TOL)


# --- Qwen3Rerank ---------------------------------------------------------------------------------------------


def make_rerank(reranker_path: Path, **kwargs: Any) -> Qwen3Rerank:
    return Qwen3Rerank(model=str(reranker_path), device="cpu", **kwargs)


def test_is_a_document_compressor(reranker_path: Path) -> None:
    assert isinstance(make_rerank(reranker_path), BaseDocumentCompressor)


def test_order_and_scores_equal_the_core(
    reranker_path: Path, core_reranker: Qwen3Reranker, docs: list[Document]
) -> None:
    ranked = core_reranker.rank(QUERY, DOCUMENTS)
    out = make_rerank(reranker_path, top_n=None).compress_documents(docs, QUERY)
    assert [d.id for d in out] == [f"doc-{i}" for i, _ in ranked]
    for document, (index, score) in zip(out, ranked):
        assert type(document.metadata["relevance_score"]) is float
        assert abs(document.metadata["relevance_score"] - score) < TOL
        assert document.page_content == DOCUMENTS[index]
        assert document.metadata["source"] == f"s{index}.md"


def test_inputs_are_untouched(reranker_path: Path, docs: list[Document]) -> None:
    before = copy.deepcopy(docs)
    out = make_rerank(reranker_path, top_n=None).compress_documents(docs, QUERY)
    assert docs == before
    assert all("relevance_score" not in d.metadata for d in docs)
    out[0].metadata["nested"]["n"] = -1
    assert all(d.metadata["nested"]["n"] != -1 for d in docs)


def test_top_n_and_threshold(reranker_path: Path, core_reranker: Qwen3Reranker, docs: list[Document]) -> None:
    scores = sorted(core_reranker.score(QUERY, DOCUMENTS), reverse=True)
    assert len(make_rerank(reranker_path).compress_documents(docs, QUERY)) == 3  # default top_n
    assert len(make_rerank(reranker_path, top_n=1).compress_documents(docs, QUERY)) == 1
    assert len(make_rerank(reranker_path, top_n=None).compress_documents(docs, QUERY)) == len(docs)
    threshold = (scores[4] + scores[5]) / 2
    kept = make_rerank(reranker_path, top_n=None, score_threshold=threshold).compress_documents(docs, QUERY)
    assert len(kept) == 5
    assert all(d.metadata["relevance_score"] >= threshold for d in kept)
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        make_rerank(reranker_path, top_n=0)


def test_public_rerank_returns_index_score_pairs(reranker_path: Path, core_reranker: Qwen3Reranker) -> None:
    rerank = make_rerank(reranker_path)
    assert rerank.rerank(DOCUMENTS, QUERY) == core_reranker.rank(QUERY, DOCUMENTS)
    assert len(rerank.rerank(DOCUMENTS, QUERY, top_n=2)) == 2
    task = "Find geography facts"
    assert rerank.rerank([Document(page_content=d) for d in DOCUMENTS], QUERY, instruction=task) == (
        core_reranker.rank(QUERY, DOCUMENTS, instruction=task)
    )


def test_empty_input_returns_empty_without_loading(reranker_path: Path) -> None:
    rerank = Qwen3Rerank(model=str(reranker_path), device="cpu", max_length=99)
    assert rerank.compress_documents([], QUERY) == []
    assert rerank.reranker is not None and rerank.reranker.loaded is None


def test_empty_content_is_scored(reranker_path: Path) -> None:
    out = make_rerank(reranker_path, top_n=None).compress_documents(
        [Document(page_content=""), Document(page_content="Beijing")], QUERY
    )
    assert len(out) == 2 and all(0.0 <= d.metadata["relevance_score"] <= 1.0 for d in out)


def test_bad_query_and_content(reranker_path: Path, docs: list[Document]) -> None:
    rerank = make_rerank(reranker_path)
    with pytest.raises(ValueError, match="query is empty"):
        rerank.compress_documents(docs, "")
    with pytest.raises(ValueError, match="query is empty"):
        rerank.compress_documents([], "  ")
    broken = [docs[0], Document.model_construct(page_content=42, metadata={})]
    with pytest.raises(TypeError, match=r"documents\[1\] is a int"):
        rerank.compress_documents(broken, QUERY)


async def test_async_compress_equals_sync(reranker_path: Path, docs: list[Document]) -> None:
    rerank = make_rerank(reranker_path)
    results = await asyncio.gather(*(rerank.acompress_documents(docs, QUERY) for _ in range(8)))
    expected = rerank.compress_documents(docs, QUERY)
    for result in results:
        assert [d.id for d in result] == [d.id for d in expected]


# --- chains ---------------------------------------------------------------------------------------------------


def test_contextual_compression_retriever_and_lcel_chain(
    embeddings: Qwen3Embeddings, reranker_path: Path, core_reranker: Qwen3Reranker
) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embeddings)
    passages = [t for t in DOCUMENTS if t.strip()]  # distinct, non-empty: their places in the prompt are findable
    store.add_documents([Document(page_content=t, id=f"doc-{i}") for i, t in enumerate(passages)])
    base = store.as_retriever(search_kwargs={"k": 6})
    retriever = ContextualCompressionRetriever(base_compressor=make_rerank(reranker_path, top_n=3), base_retriever=base)
    candidates = base.invoke(QUERY)
    expected = [
        candidates[i].page_content for i, _ in core_reranker.rank(QUERY, [d.page_content for d in candidates], top_n=3)
    ]
    assert [d.page_content for d in retriever.invoke(QUERY)] == expected

    prompts: list[str] = []

    def record(value: Any) -> Any:
        prompts.append(value.to_string())
        return value

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    llm = FakeListChatModel(responses=["Beijing."])
    chain = RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(
        answer=(
            RunnableLambda(
                lambda x: {"context": "\n---\n".join(d.page_content for d in x["docs"]), "question": x["question"]}
            )
            | prompt
            | RunnableLambda(record)
            | llm
            | StrOutputParser()
        )
    )
    result = chain.invoke(QUERY)
    assert result["answer"] == "Beijing."
    assert [d.page_content for d in result["docs"]] == expected
    positions = [prompts[0].index(text) for text in expected]
    assert positions == sorted(positions)  # the chat model saw the passages best first
