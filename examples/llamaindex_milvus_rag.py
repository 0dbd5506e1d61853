"""RAG with LlamaIndex: Qwen3 embeddings into Milvus, retrieve 10, rerank to 3 with Qwen3, answer with OpenAI.

    python examples/llamaindex_milvus_rag.py docs/ --question "What is Milvus?"

Needs OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible server). Prints {"answer", "sources"}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llama_index.core import ChatPromptTemplate, Document, StorageContext, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

from _common import load_passages, parser, where
from qwen3_retrieval.llama_index import Qwen3Embedding, Qwen3Rerank
from qwen3_retrieval.milvus import llama_index_store
from qwen3_retrieval.rag.answer import SYSTEM_PROMPT, quoted


def passages(**kwargs: Any) -> str:
    """The retrieved passages as LlamaIndex joins them, with any ``<`` that could close the delimiters escaped."""
    return quoted(kwargs["context_str"])


# qwen3-rag's prompt (LlamaIndex's default has no delimiters): the passages inside delimiters their text cannot
# close, under an instruction that they are quoted data, never instructions (a document may try to give orders).
QA_PROMPT = ChatPromptTemplate(
    [
        ChatMessage(role="system", content=SYSTEM_PROMPT),
        ChatMessage(role="user", content="<passages>\n{context_str}\n</passages>\n\nQuestion: {query_str}"),
    ],
    function_mappings={"context_str": passages},
)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    embed_model = Qwen3Embedding(model=args.embedding_model, **where(args, args.embedding_url))
    store = llama_index_store(embed_model.embedder.dimension, uri=args.uri, overwrite=True)
    documents = [
        Document(text=t, metadata={"source": s}, excluded_embed_metadata_keys=["source"])
        for t, s in load_passages(args.docs, args.embedding_model)
    ]
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model
    )
    llm = OpenAI(model=args.llm_model, temperature=0, api_base=os.environ.get("OPENAI_BASE_URL"))
    engine = index.as_query_engine(
        llm=llm,
        text_qa_template=QA_PROMPT,
        similarity_top_k=10,
        node_postprocessors=[Qwen3Rerank(model=args.reranker_model, top_n=3, **where(args, args.reranker_url))],
    )
    response = engine.query(args.question)
    sources = [
        {"text": n.node.get_content(), "source": n.node.metadata["source"], "score": n.score}
        for n in response.source_nodes
    ]
    print(json.dumps({"answer": str(response), "sources": sources}, indent=2))


if __name__ == "__main__":
    main()
