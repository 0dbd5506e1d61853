"""The request bodies of ``qwen3-rag serve``: the fields each route takes, checked before any work starts.

Unknown fields are ignored, as OpenAI's and vLLM's servers ignore them: clients send fields of their own (``user``,
vLLM's ``truncate_prompt_tokens``) that change nothing here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qwen3_retrieval.rag.types import MODES


class Body(BaseModel):
    """A JSON object; fields the route does not know are ignored."""

    model_config = ConfigDict(extra="ignore")


class Search(Body):
    """``/v1/search`` and ``/v1/ask``: the options of ``qwen3-rag ask``."""

    question: str = Field(description="what to look for")
    top_n: int = Field(3, ge=1, description="passages kept after reranking")
    candidates: int = Field(10, ge=1, description="passages retrieved before reranking")
    mode: Literal["hybrid", "dense"] = MODES[0]  # type: ignore[assignment]


class Embeddings(Body):
    """OpenAI's embeddings request, with the query extension and vLLM's ``use_activation``."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    input_type: Literal["query", "document"] = Field(
        "document", description="extension: 'query' embeds with the instruction, as a search query"
    )
    instruction: str | None = Field(None, description="extension: the query instruction; None: the model's")
    use_activation: bool | None = Field(None, description="vLLM's: false returns the raw pooled state")


class Classify(Body):
    """vLLM's ``/classify`` with token ids: the reranker's prompts, built by the client."""

    input: list[int] | list[list[int]]
    model: str | None = None


class Document(Body):
    """A document as Cohere's and Jina's clients may send it."""

    text: str


class Rerank(Body):
    """The rerank request vLLM, Jina and Cohere share, with an ``instruction`` extension."""

    query: str
    documents: list[str | Document]
    model: str | None = None
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True
    instruction: str | None = Field(None, description="extension: the task instruction; None: the model's")


class Index(Body):
    """``/v1/index``: files or folders under the served roots."""

    paths: list[str] = Field(min_length=1)
