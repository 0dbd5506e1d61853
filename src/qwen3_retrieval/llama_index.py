"""LlamaIndex components: Qwen3 embeddings, reranking, and a retriever over a ``qwen3-rag`` index.

:class:`Qwen3Embedding` is a ``BaseEmbedding``, :class:`Qwen3Rerank` a node postprocessor and
:class:`Qwen3RagRetriever` a ``BaseRetriever``.

Example:
    .. code-block:: python

        from llama_index.core import Settings
        from qwen3_retrieval.llama_index import Qwen3Embedding, Qwen3Rerank

        Settings.embed_model = Qwen3Embedding(model="Qwen/Qwen3-Embedding-0.6B")
        engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[Qwen3Rerank(top_n=3)])
"""

from __future__ import annotations

import base64
from io import BytesIO
from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import ImageNode, ImageType, MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "qwen3_retrieval.llama_index needs llama-index-core: pip install 'qwen3-retrieval[llama-index]'"
    ) from err

from pydantic import Field

from qwen3_retrieval._fields import (
    COMPONENT_CONFIG,
    EmbedderFields,
    RerankerFields,
    VLEmbedderFields,
    VLRerankerFields,
)
from qwen3_retrieval._validation import check_query
from qwen3_retrieval.embedder import Qwen3Embedder
from qwen3_retrieval.processors import ranked
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from qwen3_retrieval.rag.pipeline import RagPipeline
from qwen3_retrieval.rag.types import MODES, Source
from qwen3_retrieval.reranker import Qwen3Reranker
from qwen3_retrieval.vl.models import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3_retrieval.vl.prompts import DEFAULT_VL_EMBEDDING_MODEL, DEFAULT_VL_RERANKER_MODEL

__all__ = ["Qwen3Embedding", "Qwen3RagRetriever", "Qwen3Rerank", "Qwen3VLEmbedding", "Qwen3VLRerank"]

dispatcher = get_dispatcher(__name__)


class _TextEmbeddingCalls:
    """The embedding components' text path: queries through ``embed_query``, texts through ``embed_documents``."""

    @property
    def _core(self) -> Qwen3Embedder | Qwen3VLEmbedder:
        embedder = getattr(self, "embedder", None)
        assert embedder is not None  # bound by the fields' validator
        return embedder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._core.embed_query(query).tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._core.embed_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._core.embed_documents(texts).tolist()

    # The async methods await the core's: no thread per call, and concurrent requests to a vLLM server.
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._core.aembed_query(query)).tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._core.aembed_documents([text]))[0].tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return (await self._core.aembed_documents(texts)).tolist()


class Qwen3Embedding(_TextEmbeddingCalls, EmbedderFields, BaseEmbedding):
    """Qwen3-Embedding as a LlamaIndex ``BaseEmbedding``: queries get the instruction, texts do not.

    ``model`` and ``model_name`` name the same thing. ``BaseEmbedding`` already emits the embedding events;
    this class does not emit them again. Batches of ``embed_batch_size`` texts go to the core in one call,
    which sorts them by length and packs them by token budget.
    """

    model_config = COMPONENT_CONFIG
    _model_field = "model_name"
    _model_alias = "model"

    model_name: str = Field(default=DEFAULT_EMBEDDING_MODEL, description="Hub id or folder of the checkpoint.")
    # Larger than LlamaIndex's default of 10 so the core can length-sort and pack a useful batch.
    embed_batch_size: int = Field(default=64, gt=0, le=2048, description="Texts per call into the core.")
    embedder: Qwen3Embedder | None = Field(default=None, exclude=True, description="An existing core embedder.")

    @classmethod
    def class_name(cls) -> str:
        """Return the class name LlamaIndex serialises this component under."""
        return "Qwen3Embedding"


class _NodeRanking:
    """The postprocessors' one path: check the query, emit the standard events, score, keep the best."""

    model: str
    top_n: int | None
    score_threshold: float | None
    keep_retrieval_score: bool
    reranker: Any
    callback_manager: Any

    def _inputs(self, nodes: list[NodeWithScore]) -> list[Any]:
        raise NotImplementedError

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError(f"{type(self).__name__} needs the query: call postprocess_nodes(nodes, query_str=...)")
        query = check_query(query_bundle.query_str)
        assert self.reranker is not None
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n or len(nodes), model_name=self.model)
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }
        kept: list[NodeWithScore] = []
        try:
            with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
                best = ranked(self.reranker.score(query, self._inputs(nodes)), self.top_n, self.score_threshold)
                kept = [self._rescored(nodes[index], score) for index, score in best]
                event.on_end(payload={EventPayload.NODES: kept})
        finally:
            dispatcher.event(ReRankEndEvent(nodes=kept))  # also when scoring fails: every start has its end
        return kept

    def _rescored(self, original: NodeWithScore, score: float) -> NodeWithScore:
        node = original.node
        if self.keep_retrieval_score:
            node = node.model_copy(update={"metadata": {**node.metadata, "retrieval_score": original.score}})
        return NodeWithScore(node=node, score=float(score))


class Qwen3Rerank(_NodeRanking, RerankerFields, BaseNodePostprocessor):
    """Qwen3-Reranker as a LlamaIndex node postprocessor.

    Scores ``node.get_content(metadata_mode=MetadataMode.EMBED)`` against the query and returns new
    ``NodeWithScore`` objects, best first, with ``score`` = P(yes) as a float. Emits ``ReRankStartEvent`` /
    ``ReRankEndEvent`` (also for empty input, and with no nodes when scoring fails) and the
    ``CBEventType.RERANKING`` callback event; a missing or empty query raises before any event.
    """

    model_config = COMPONENT_CONFIG

    model: str = Field(default=DEFAULT_RERANKER_MODEL, description="Hub id or folder of the checkpoint.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in the node's metadata as 'retrieval_score'."
    )
    reranker: Qwen3Reranker | None = Field(default=None, exclude=True, description="An existing core reranker.")

    @classmethod
    def class_name(cls) -> str:
        """Return the class name LlamaIndex serialises this component under."""
        return "Qwen3Rerank"

    def _inputs(self, nodes: list[NodeWithScore]) -> list[Any]:
        return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


class Qwen3VLEmbedding(_TextEmbeddingCalls, VLEmbedderFields, MultiModalEmbedding):
    """Qwen3-VL-Embedding as a LlamaIndex ``MultiModalEmbedding``: texts and images in one vector space.

    Queries get the ``instruction`` (the official README's by default); texts and images the official default.
    An image is a path (or a URL with ``allow_urls=True``) or a ``BytesIO``. Usable as a
    ``MultiModalVectorStoreIndex``'s ``image_embed_model`` and ``embed_model``.
    """

    model_config = COMPONENT_CONFIG
    _model_field = "model_name"
    _model_alias = "model"

    model_name: str = Field(default=DEFAULT_VL_EMBEDDING_MODEL, description="Hub id or folder of the checkpoint.")
    embed_batch_size: int = Field(default=16, gt=0, le=2048, description="Inputs per call into the core.")
    embedder: Qwen3VLEmbedder | None = Field(default=None, exclude=True, description="An existing core embedder.")

    @classmethod
    def class_name(cls) -> str:
        """Return the class name LlamaIndex serialises this component under."""
        return "Qwen3VLEmbedding"

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_image_embeddings([img_file_path])[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        assert isinstance(self.embedder, Qwen3VLEmbedder)
        images = [p.getvalue() if isinstance(p, BytesIO) else p for p in img_file_paths]
        return self.embedder.embed_images(images).tolist()

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return (await self._aget_image_embeddings([img_file_path]))[0]

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        assert isinstance(self.embedder, Qwen3VLEmbedder)
        images = [p.getvalue() if isinstance(p, BytesIO) else p for p in img_file_paths]
        return (await self.embedder.aembed_images(images)).tolist()


class Qwen3VLRerank(_NodeRanking, VLRerankerFields, BaseNodePostprocessor):
    """Qwen3-VL-Reranker as a LlamaIndex node postprocessor: ``ImageNode`` s and text nodes ranked together.

    An ``ImageNode`` is scored as its image (``image`` as base64, else ``image_path``, else ``image_url`` with
    ``allow_urls=True``) with its text; other nodes as ``get_content(metadata_mode=MetadataMode.EMBED)``. Emits
    the same events as :class:`Qwen3Rerank`.
    """

    model_config = COMPONENT_CONFIG

    model: str = Field(default=DEFAULT_VL_RERANKER_MODEL, description="Hub id or folder of the checkpoint.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in the node's metadata as 'retrieval_score'."
    )
    reranker: Qwen3VLReranker | None = Field(default=None, exclude=True, description="An existing core reranker.")

    @classmethod
    def class_name(cls) -> str:
        """Return the class name LlamaIndex serialises this component under."""
        return "Qwen3VLRerank"

    def _inputs(self, nodes: list[NodeWithScore]) -> list[Any]:
        return [_vl_input(n.node) for n in nodes]


def _vl_input(node: Any) -> dict[str, Any]:
    text = node.get_content(metadata_mode=MetadataMode.EMBED)
    if not isinstance(node, ImageNode):
        return {"text": text}
    if node.image:
        image: Any = base64.b64decode(node.image)
    else:
        image = node.image_path or node.image_url
    if image is None:
        return {"text": text}
    return {"text": text, "image": image} if text else {"image": image}


class Qwen3RagRetriever(BaseRetriever):
    """The index ``qwen3-rag index`` built, as a LlamaIndex retriever: hybrid search, then Qwen3-Reranker.

    Returns the best ``top_n`` passages as ``NodeWithScore`` (score = P(yes)), best first, each node's metadata
    holding ``source`` (the file), ``heading`` and ``location`` (``"page 3"`` for PDFs). The pipeline keeps its
    models, so an agent can call it for every question without reloading anything.

    Args:
        pipeline: The index and its models (:class:`~qwen3_retrieval.rag.pipeline.RagPipeline`).
        candidates: Passages retrieved before reranking.
        top_n: Passages kept after reranking.
        mode: ``"hybrid"`` (dense and BM25 fused by reciprocal rank) or ``"dense"``.
        **kwargs: ``BaseRetriever``'s own arguments (``callback_manager``…).
    """

    def __init__(
        self, pipeline: RagPipeline, *, candidates: int = 10, top_n: int = 3, mode: str = "hybrid", **kwargs: Any
    ) -> None:
        if candidates < 1 or top_n < 1:
            raise ValueError(f"candidates and top_n must be at least 1, got {candidates} and {top_n}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__(**kwargs)
        self.pipeline, self.candidates, self.top_n, self.mode = pipeline, candidates, top_n, mode

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = check_query(query_bundle.query_str)
        sources = self.pipeline.retrieve(query, candidates=self.candidates, top_n=self.top_n, mode=self.mode)
        return [_node(source) for source in sources]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = check_query(query_bundle.query_str)
        sources = await self.pipeline.aretrieve(query, candidates=self.candidates, top_n=self.top_n, mode=self.mode)
        return [_node(source) for source in sources]


def _node(source: Source) -> NodeWithScore:
    metadata = {"source": source.path, "heading": source.heading, "location": source.location}
    if source.image:  # a page image (--pages): "page 3" of the source file, or "file" when the file is the image
        metadata["image"] = source.image
    return NodeWithScore(node=TextNode(text=source.text, metadata=metadata), score=source.score)
