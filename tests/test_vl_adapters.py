"""The Qwen3-VL components of LangChain and LlamaIndex give the core's vectors and scores, in their conventions."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3_retrieval.langchain import Qwen3VLEmbeddings, Qwen3VLRerank
from qwen3_retrieval.llama_index import Qwen3VLEmbedding
from qwen3_retrieval.llama_index import Qwen3VLRerank as LlamaVLRerank
from test_llama_index import Collect
from test_vl import picture, png_bytes

TOL = 1e-5
QUERY = "a photo of the beach"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, size in enumerate([(64, 48), (100, 70), (40, 90)]):
        path = folder / f"image-{i}.png"
        picture(*size, seed=40 + i).save(path)
        paths.append(path)
    return paths


def test_langchain_embeddings_equal_the_core(vl_embedding: Path, images: list[Path]) -> None:
    embeddings = Qwen3VLEmbeddings(model=str(vl_embedding))
    core = Qwen3VLEmbedder(vl_embedding)
    uris = [str(p) for p in images]
    np.testing.assert_allclose(embeddings.embed_image(uris), core.embed_images(uris), atol=TOL)
    np.testing.assert_allclose(embeddings.embed_query(QUERY), core.embed_query(QUERY), atol=TOL)
    np.testing.assert_allclose(embeddings.embed_documents(["a", "b"]), core.embed_documents(["a", "b"]), atol=TOL)
    assert isinstance(embeddings.embed_image(uris)[0][0], float)


def test_langchain_rerank_scores_images_named_in_metadata(vl_reranker: Path, images: list[Path]) -> None:
    docs = [
        Document(page_content="sand and waves", metadata={"id": 1}),
        Document(page_content="", metadata={"image": str(images[0])}),
        Document(page_content="a caption", metadata={"image": str(images[1])}),
    ]
    before = [d.model_copy(deep=True) for d in docs]
    rerank = Qwen3VLRerank(model=str(vl_reranker), top_n=None)
    core = Qwen3VLReranker(vl_reranker)
    as_inputs = ["sand and waves", {"image": str(images[0])}, {"text": "a caption", "image": str(images[1])}]
    expected = core.score(QUERY, as_inputs)
    out = rerank.compress_documents(docs, QUERY)
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(sorted(expected, reverse=True), abs=TOL)
    assert docs == before  # inputs untouched
    assert max(expected) - min(expected) > 1e-3


def test_llama_index_embedding_equals_the_core(vl_embedding: Path, images: list[Path]) -> None:
    model = Qwen3VLEmbedding(model_name=str(vl_embedding))
    core = Qwen3VLEmbedder(vl_embedding)
    expected = core.embed_images([images[0]])[0]
    np.testing.assert_allclose(model.get_image_embedding(str(images[0])), expected, atol=TOL)
    np.testing.assert_allclose(model.get_image_embedding(io.BytesIO(images[0].read_bytes())), expected, atol=TOL)
    batch = model.get_image_embedding_batch([str(p) for p in images])
    np.testing.assert_allclose(batch, core.embed_images(images), atol=TOL)
    np.testing.assert_allclose(model.get_query_embedding(QUERY), core.embed_query(QUERY), atol=TOL)
    np.testing.assert_allclose(model.get_text_embedding("sand"), core.embed_documents(["sand"])[0], atol=TOL)


def test_llama_index_rerank_mixes_image_and_text_nodes(vl_reranker: Path, images: list[Path]) -> None:
    collect = Collect(events=[])
    root = get_dispatcher()
    root.add_event_handler(collect)
    try:
        raw = png_bytes(picture(80, 60, 50))
        nodes = [
            NodeWithScore(node=TextNode(text="sand and waves"), score=0.3),
            NodeWithScore(node=ImageNode(image_path=str(images[0])), score=0.2),
            NodeWithScore(node=ImageNode(image=base64.b64encode(raw).decode(), text="a caption"), score=0.1),
        ]
        rerank = LlamaVLRerank(model=str(vl_reranker), top_n=2, keep_retrieval_score=True)
        out = rerank.postprocess_nodes(nodes, query_str=QUERY)
    finally:
        root.event_handlers.remove(collect)
    expected = Qwen3VLReranker(vl_reranker).score(
        QUERY, ["sand and waves", {"image": str(images[0])}, {"text": "a caption", "image": raw}]
    )
    order = np.argsort(expected)[::-1][:2]
    assert [n.score for n in out] == pytest.approx([expected[i] for i in order], abs=TOL)
    assert [n.node.node_id for n in out] == [nodes[i].node.node_id for i in order]
    assert out[0].node.metadata["retrieval_score"] == nodes[order[0]].score
    names = [type(e).__name__ for e in collect.events]
    assert names.count("ReRankStartEvent") == 1 and names.count("ReRankEndEvent") == 1


def test_components_check_options_like_the_core(vl_embedding: Path) -> None:
    with pytest.raises(ValueError, match="for vLLM, start a server and pass its base_url="):
        Qwen3VLEmbeddings(model=str(vl_embedding), engine="vllm")
    with pytest.raises(ValueError):
        Qwen3VLEmbedding(model_name=str(vl_embedding), max_pixels=10)
    shared = Qwen3VLEmbedder(vl_embedding)
    model: Any = Qwen3VLEmbedding(embedder=shared)
    assert model.embedder is shared and model.model_name == str(vl_embedding)


async def test_async_paths_give_the_sync_results(vl_embedding: Path, vl_reranker: Path, images: list[Path]) -> None:
    import asyncio

    core = Qwen3VLEmbedder(vl_embedding)
    lc = Qwen3VLEmbeddings(embedder=core)
    li = Qwen3VLEmbedding(embedder=core)
    got = await asyncio.gather(
        core.aembed_images(images), lc.aembed_query(QUERY), li.aget_image_embedding(str(images[1])),
        li.aget_text_embedding("sand"),
    )  # fmt: skip
    np.testing.assert_allclose(got[0], core.embed_images(images), atol=TOL)
    np.testing.assert_allclose(got[1], core.embed_query(QUERY), atol=TOL)
    np.testing.assert_allclose(got[2], core.embed_images([images[1]])[0], atol=TOL)
    np.testing.assert_allclose(got[3], core.embed_documents(["sand"])[0], atol=TOL)
    reranker = Qwen3VLReranker(vl_reranker)
    docs = [Document(page_content="sand"), Document(page_content="", metadata={"image": str(images[2])})]
    out = await Qwen3VLRerank(reranker=reranker, top_n=None).acompress_documents(docs, QUERY)
    expected = reranker.score(QUERY, ["sand", {"image": str(images[2])}])
    assert sorted(d.metadata["relevance_score"] for d in out) == pytest.approx(sorted(expected), abs=TOL)
    assert await reranker.arank(QUERY, ["sand"], top_n=1) == reranker.rank(QUERY, ["sand"], top_n=1)
