"""LangChain components: Qwen3 embeddings, reranking, and a retriever over a ``qwen3-rag`` index.

:class:`Qwen3Embeddings` is an ``Embeddings``, :class:`Qwen3Rerank` a document compressor and
:class:`Qwen3RagRetriever` a ``BaseRetriever``.

Example:
    .. code-block:: python

        from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank

        embeddings = Qwen3Embeddings(model="Qwen/Qwen3-Embedding-0.6B")
        reranker = Qwen3Rerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=3)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "qwen3_retrieval.langchain needs langchain-core: pip install 'qwen3-retrieval[langchain]'"
    ) from err

from pydantic import ConfigDict, Field

from qwen3_retrieval._fields import (
    COMPONENT_CONFIG,
    EmbedderFields,
    RerankerFields,
    VLEmbedderFields,
    VLRerankerFields,
)
from qwen3_retrieval._validation import check_texts
from qwen3_retrieval.embedder import Qwen3Embedder
from qwen3_retrieval.processors import ranked
from qwen3_retrieval.prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from qwen3_retrieval.rag.pipeline import RagPipeline
from qwen3_retrieval.rag.types import Source
from qwen3_retrieval.reranker import Qwen3Reranker
from qwen3_retrieval.vl.models import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3_retrieval.vl.prompts import DEFAULT_VL_EMBEDDING_MODEL, DEFAULT_VL_RERANKER_MODEL

__all__ = ["Qwen3Embeddings", "Qwen3RagRetriever", "Qwen3Rerank", "Qwen3VLEmbeddings", "Qwen3VLRerank"]


class _TextEmbeddings:
    """The embedding components' text path: documents with no instruction, a query with the instruction."""

    embedder: Qwen3Embedder | Qwen3VLEmbedder | None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no instruction); returns one list of Python floats per text."""
        assert self.embedder is not None
        return self.embedder.embed_documents(check_texts(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query with the instruction."""
        assert self.embedder is not None
        return self.embedder.embed_query(check_texts([text], "text")[0]).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`: awaits the core (no thread per call; concurrent requests to a server)."""
        assert self.embedder is not None
        return (await self.embedder.aembed_documents(check_texts(texts))).tolist()

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        assert self.embedder is not None
        return (await self.embedder.aembed_query(check_texts([text], "text")[0])).tolist()


class Qwen3Embeddings(_TextEmbeddings, EmbedderFields, Embeddings):
    """Qwen3-Embedding as a LangChain ``Embeddings``: queries get the instruction, documents do not.

    Construction loads nothing; the model loads on the first call and is shared with every other object using
    the same checkpoint, device and dtype (also LlamaIndex ones, or pass ``embedder=`` to share explicitly).
    ``model_name=`` is accepted for ``model=``, as in ``HuggingFaceEmbeddings``.

    Example:
        .. code-block:: python

            embeddings = Qwen3Embeddings(model="Qwen/Qwen3-Embedding-0.6B", dimensions=512)
            vectors = embeddings.embed_documents(["Beijing is the capital of China."])
            query = embeddings.embed_query("What is the capital of China?")
    """

    model_config = COMPONENT_CONFIG

    model: str = DEFAULT_EMBEDDING_MODEL
    """Hub id or local folder of a Qwen3-Embedding checkpoint."""
    embedder: Qwen3Embedder | None = Field(default=None, exclude=True)
    """An existing core embedder to use; options given next to it must agree with it."""


class _DocumentRanking:
    """The compressors' one path: score what each document stands for, keep the best as scored copies."""

    top_n: int | None
    score_threshold: float | None
    reranker: Qwen3Reranker | Qwen3VLReranker | None

    def _inputs(self, documents: Sequence[Document]) -> list[Any]:
        raise NotImplementedError

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Return copies of the best ``top_n`` documents at or above ``score_threshold``, best first."""
        assert self.reranker is not None
        scores = self.reranker.score(query, self._inputs(documents))
        return [_with_score(documents[i], score) for i, score in ranked(scores, self.top_n, self.score_threshold)]

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits the core's ``ascore``."""
        assert self.reranker is not None
        scores = await self.reranker.ascore(query, self._inputs(documents))
        return [_with_score(documents[i], score) for i, score in ranked(scores, self.top_n, self.score_threshold)]


class Qwen3Rerank(_DocumentRanking, RerankerFields, BaseDocumentCompressor):
    """Qwen3-Reranker as a LangChain document compressor (e.g. in ``ContextualCompressionRetriever``).

    Returns new documents, best first, each with ``metadata["relevance_score"]`` = P(yes) as a float; ``id`` and
    the other metadata are kept and the inputs are never changed.

    Example:
        .. code-block:: python

            reranker = Qwen3Rerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=3)
            best = reranker.compress_documents(docs, "What is the capital of China?")
    """

    model_config = COMPONENT_CONFIG

    model: str = DEFAULT_RERANKER_MODEL
    """Hub id or local folder of a Qwen3-Reranker checkpoint (causal LM or converted seq-cls)."""
    reranker: Qwen3Reranker | None = Field(default=None, exclude=True)
    """An existing core reranker to use; options given next to it must agree with it."""

    def rerank(
        self,
        documents: Sequence[str | Document],
        query: str,
        *,
        top_n: int | None = None,
        instruction: str | None = None,
    ) -> list[tuple[int, float]]:
        """Score documents against ``query``; return ``(index, score)`` pairs, best first.

        Args:
            documents: Strings or ``Document`` objects (their ``page_content`` is scored).
            query: The search text; must not be empty.
            top_n: Keep this many; None returns every document (``self.top_n`` is not applied here).
            instruction: Task instruction for this call; None uses the component's, ``""`` an empty one.
        """
        texts = check_texts([d.page_content if isinstance(d, Document) else d for d in documents], "documents")
        assert self.reranker is not None
        return self.reranker.rank(query, texts, top_n=top_n, instruction=instruction)

    def _inputs(self, documents: Sequence[Document]) -> list[Any]:
        return [d.page_content for d in documents]


class Qwen3VLEmbeddings(_TextEmbeddings, VLEmbedderFields, Embeddings):
    """Qwen3-VL-Embedding as a LangChain ``Embeddings``, with ``embed_image`` as LangChain's image embedders have.

    Texts and images share one vector space: a text query finds images, and an image finds texts. Queries get
    the ``instruction`` (the official README's by default), documents and images the official default. The
    async methods await the core's.

    Example:
        .. code-block:: python

            embeddings = Qwen3VLEmbeddings(model="Qwen/Qwen3-VL-Embedding-2B")
            pages = embeddings.embed_image(["scan/page-1.png", "scan/page-2.png"])
            query = embeddings.embed_query("the invoice total")
    """

    model_config = COMPONENT_CONFIG

    model: str = DEFAULT_VL_EMBEDDING_MODEL
    """Hub id or local folder of a Qwen3-VL-Embedding checkpoint."""
    embedder: Qwen3VLEmbedder | None = Field(default=None, exclude=True)
    """An existing core embedder to use; options given next to it must agree with it."""

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images given as local paths (or ``http(s)`` URLs with ``allow_urls=True``)."""
        assert self.embedder is not None
        return self.embedder.embed_images(uris).tolist()


class Qwen3VLRerank(_DocumentRanking, VLRerankerFields, BaseDocumentCompressor):
    """Qwen3-VL-Reranker as a LangChain document compressor: documents that are texts, images, or both.

    A document whose ``metadata[image_key]`` names an image (a path, bytes, or a URL with ``allow_urls=True``)
    is scored as that image with its ``page_content`` as text; the others as their text. Returns copies, best
    first, with ``metadata["relevance_score"]``; the inputs are never changed.
    """

    model_config = COMPONENT_CONFIG

    model: str = DEFAULT_VL_RERANKER_MODEL
    """Hub id or local folder of a Qwen3-VL-Reranker checkpoint."""
    image_key: str = "image"
    """The metadata key that names a document's image."""
    reranker: Qwen3VLReranker | None = Field(default=None, exclude=True)
    """An existing core reranker to use; options given next to it must agree with it."""

    def _inputs(self, documents: Sequence[Document]) -> list[Any]:
        return [self._input(d) for d in documents]

    def _input(self, document: Document) -> dict[str, Any]:
        image = document.metadata.get(self.image_key)
        item: dict[str, Any] = {"text": document.page_content} if document.page_content or image is None else {}
        if image is not None:
            item["image"] = image
        return item


def _with_score(document: Document, score: float) -> Document:
    metadata = copy.deepcopy(document.metadata)
    metadata["relevance_score"] = float(score)
    return document.model_copy(update={"metadata": metadata})


class Qwen3RagRetriever(BaseRetriever):
    """The index ``qwen3-rag index`` built, as a LangChain retriever: hybrid search, then Qwen3-Reranker.

    Returns the best ``top_n`` passages as documents, best first, each with ``metadata`` holding ``source`` (the
    file), ``heading``, ``location`` (``"page 3"`` for PDFs) and ``relevance_score`` (P(yes)). The pipeline keeps
    its models, so an agent can call it as a tool for every question without reloading anything.

    Example:
        .. code-block:: python

            from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

            retriever = Qwen3RagRetriever(pipeline=RagPipeline(RagConfig(uri="./qwen3_rag.db")))
            docs = retriever.invoke("How do I create an index?")
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    pipeline: RagPipeline
    """The index and its models (:class:`~qwen3_retrieval.rag.pipeline.RagPipeline`)."""
    candidates: int = Field(default=10, ge=1)
    """Passages retrieved before reranking."""
    top_n: int = Field(default=3, ge=1)
    """Passages kept after reranking."""
    mode: Literal["hybrid", "dense"] = "hybrid"
    """``"hybrid"``: dense and BM25 fused by reciprocal rank; ``"dense"``: dense alone."""

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        sources = self.pipeline.retrieve(query, candidates=self.candidates, top_n=self.top_n, mode=self.mode)
        return [_document(source) for source in sources]

    async def _aget_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        sources = await self.pipeline.aretrieve(query, candidates=self.candidates, top_n=self.top_n, mode=self.mode)
        return [_document(source) for source in sources]


def _document(source: Source) -> Document:
    metadata = {"source": source.path, "heading": source.heading, "location": source.location}
    if source.image:  # a page image (--pages): "page 3" of the source file, or "file" when the file is the image
        metadata["image"] = source.image
    return Document(page_content=source.text, metadata={**metadata, "relevance_score": source.score})
