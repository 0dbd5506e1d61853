"""Both frameworks' Milvus stores, dense and hybrid, in one environment, on real Milvus Lite: as a file, and as
its gRPC server (the Milvus protocol over TCP) for the main tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MilvusServer
from qwen3_retrieval.milvus import langchain_store, llama_index_store


@pytest.fixture(params=["file", "server"])
def milvus_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A Milvus Lite file, or a Milvus Lite server started for the test (``http://127.0.0.1:PORT``)."""
    if request.param == "file":
        yield str(tmp_path / "store.db")
        return
    (tmp_path / "milvus-data").mkdir()
    server = MilvusServer(tmp_path / "milvus-data")
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


TEXTS = ["Milvus is a vector database.", "The capital of China is Beijing.", "Gravity is a force."]


def document_vectors(embedding_path: Path) -> list[list[float]]:
    """Each text's document vector, computed by the core outside any store."""
    from qwen3_retrieval import Qwen3Embedder

    return Qwen3Embedder(embedding_path, device="cpu").embed_documents(TEXTS).tolist()


@pytest.mark.parametrize("hybrid", [False, True])
def test_langchain_store(milvus_uri: str, embedding_path: Path, hybrid: bool) -> None:
    from langchain_core.documents import Document

    from qwen3_retrieval.langchain import Qwen3Embeddings

    embeddings = Qwen3Embeddings(model=str(embedding_path), device="cpu")
    store = langchain_store(embeddings, uri=milvus_uri, hybrid=hybrid, drop_old=True)
    store.add_documents([Document(page_content=t, metadata={"source": f"s{i}"}) for i, t in enumerate(TEXTS)])
    found = store.similarity_search("capital of China", k=3)
    assert sorted(d.page_content for d in found) == sorted(TEXTS)
    assert all("source" in d.metadata for d in found)
    if not hybrid:
        # k=1 by each text's own document vector must find that text: a store given wrong vectors (another
        # text's, a query-prompted one, a cut one) would not.
        for text, vector in zip(TEXTS, document_vectors(embedding_path)):
            assert store.similarity_search_by_vector(vector, k=1)[0].page_content == text
    if hybrid:
        # Only one passage shares the query's words, so BM25 ranks it alone; rank fusion must put it first
        # whatever the random-weight dense ranking says.
        assert found[0].page_content == TEXTS[1]


@pytest.mark.parametrize("hybrid", [False, True])
def test_llama_index_store(milvus_uri: str, embedding_path: Path, hybrid: bool) -> None:
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    from qwen3_retrieval.llama_index import Qwen3Embedding

    embed_model = Qwen3Embedding(model=str(embedding_path), device="cpu")
    store = llama_index_store(64, uri=milvus_uri, hybrid=hybrid, overwrite=True)
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in TEXTS],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
    mode = "hybrid" if hybrid else "default"
    nodes = index.as_retriever(similarity_top_k=3, vector_store_query_mode=mode).retrieve("capital of China")
    assert sorted(n.node.get_content() for n in nodes) == sorted(TEXTS)
    if not hybrid:
        from llama_index.core.vector_stores import VectorStoreQuery

        for text, vector in zip(TEXTS, document_vectors(embedding_path)):
            found = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=1))
            assert found.nodes is not None and found.nodes[0].get_content() == text
    if hybrid:
        assert nodes[0].node.get_content() == TEXTS[1]  # BM25 took part (see the LangChain test)


def contents(found: list) -> list[str]:
    return sorted(getattr(d, "page_content", None) or d.node.get_content() for d in found)


@pytest.mark.parametrize("hybrid", [False, True])
def test_langchain_store_reopens_an_existing_collection_or_replaces_it(
    tmp_path: Path, embedding_path: Path, hybrid: bool, recwarn: pytest.WarningsRecorder
) -> None:
    from qwen3_retrieval.langchain import Qwen3Embeddings

    embeddings = Qwen3Embeddings(model=str(embedding_path), device="cpu")
    uri = str(tmp_path / "lc.db")
    langchain_store(embeddings, uri=uri, hybrid=hybrid).add_texts(TEXTS[:2])
    # A second store on the same collection (a script run again) opens it: it used to fail with "should create
    # connection first", since langchain-milvus opens the collection before the ORM connection was registered.
    reopened = langchain_store(embeddings, uri=uri, hybrid=hybrid)
    reopened.add_texts(TEXTS[2:])
    assert contents(reopened.similarity_search("capital", k=10)) == sorted(TEXTS)
    replaced = langchain_store(embeddings, uri=uri, hybrid=hybrid, drop_old=True)
    replaced.add_texts(TEXTS[:1])
    assert contents(replaced.similarity_search("capital", k=10)) == TEXTS[:1]
    # pymilvus' notices about the ORM that langchain-milvus (and the connection above) use are not the user's.
    assert not [str(w.message) for w in recwarn if "ORM-style" in str(w.message)]


@pytest.mark.parametrize("hybrid", [False, True])
def test_llama_index_store_reopens_an_existing_collection_or_replaces_it(
    tmp_path: Path, embedding_path: Path, hybrid: bool
) -> None:
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    from qwen3_retrieval.llama_index import Qwen3Embedding

    embed_model = Qwen3Embedding(model=str(embedding_path), device="cpu")
    uri = str(tmp_path / "li.db")

    def add(texts: list[str], overwrite: bool) -> VectorStoreIndex:
        store = llama_index_store(64, uri=uri, hybrid=hybrid, overwrite=overwrite)
        return VectorStoreIndex.from_documents(
            [Document(text=t) for t in texts],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=embed_model,
        )

    add(TEXTS[:2], overwrite=True)
    assert contents(add(TEXTS[2:], overwrite=False).as_retriever(similarity_top_k=10).retrieve("x")) == sorted(TEXTS)
    assert contents(add(TEXTS[:1], overwrite=True).as_retriever(similarity_top_k=10).retrieve("x")) == TEXTS[:1]


def test_both_stores_hold_image_vectors_beside_text(tmp_path: Path, vl_embedding: Path, vl_reranker: Path) -> None:
    """Qwen3-VL vectors of images and texts in one collection, each framework's way; then reranked together."""
    from langchain_core.documents import Document
    from llama_index.core.schema import ImageNode, TextNode
    from llama_index.core.vector_stores import VectorStoreQuery
    from PIL import Image

    from qwen3_retrieval.langchain import Qwen3VLEmbeddings, Qwen3VLRerank
    from qwen3_retrieval.llama_index import Qwen3VLEmbedding
    from qwen3_retrieval.llama_index import Qwen3VLRerank as LlamaVLRerank

    photo = tmp_path / "photo.png"
    Image.effect_noise((96, 64), 60).convert("RGB").save(photo)
    # LangChain: texts through add_documents, the image's vector through add_embeddings, its path as metadata.
    embeddings = Qwen3VLEmbeddings(model=str(vl_embedding), device="cpu")
    # Dynamic fields: metadata keys that only some rows have (an image's path) are kept.
    store = langchain_store(embeddings, uri=str(tmp_path / "lc.db"), drop_old=True, enable_dynamic_field=True)
    store.add_documents([Document(page_content=t) for t in TEXTS])
    image_vector = embeddings.embed_image([str(photo)])[0]
    store.add_embeddings(texts=[""], embeddings=[image_vector], metadatas=[{"image": str(photo)}])
    found = store.similarity_search_by_vector(image_vector, k=4)
    assert found[0].metadata.get("image") == str(photo) and len(found) == 4
    ranked = Qwen3VLRerank(model=str(vl_reranker), device="cpu", top_n=None).compress_documents(found, "a photo")
    assert sorted(d.metadata.get("image", "") for d in ranked) == ["", "", "", str(photo)]
    # LlamaIndex: an ImageNode with the image's vector beside text nodes in one Milvus collection.
    embed_model = Qwen3VLEmbedding(model_name=str(vl_embedding), device="cpu")
    vectors = llama_index_store(64, uri=str(tmp_path / "li.db"), overwrite=True)
    nodes = [TextNode(text=t, embedding=embed_model.get_text_embedding(t)) for t in TEXTS]
    nodes.append(ImageNode(image_path=str(photo), embedding=embed_model.get_image_embedding(str(photo))))
    vectors.add(nodes)
    result = vectors.query(VectorStoreQuery(query_embedding=image_vector, similarity_top_k=4))
    assert result.nodes is not None and isinstance(result.nodes[0], ImageNode)
    assert result.nodes[0].image_path == str(photo)
    from llama_index.core.schema import NodeWithScore

    reranked = LlamaVLRerank(model=str(vl_reranker), device="cpu", top_n=4).postprocess_nodes(
        [NodeWithScore(node=n, score=0.0) for n in result.nodes], query_str="a photo"
    )
    assert len(reranked) == 4 and any(isinstance(n.node, ImageNode) for n in reranked)
