"""Hybrid search: dense Qwen3 vectors plus Milvus' built-in BM25 full-text search, then Qwen3 reranking.

    python examples/hybrid_search.py docs/ --question "HNSW index parameters"

Milvus Lite 3 runs both searches and fuses them (reciprocal rank fusion); Qwen3-Reranker orders the fused
candidates. No chat model is needed. Prints the reranked passages as JSON.
"""

from __future__ import annotations

import json

from langchain_core.documents import Document

from _common import load_passages, parser, where
from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank
from qwen3_retrieval.milvus import langchain_store


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    embeddings = Qwen3Embeddings(model=args.embedding_model, **where(args, args.embedding_url))
    store = langchain_store(embeddings, uri=args.uri, collection_name="qwen3_hybrid", hybrid=True, drop_old=True)
    passages = load_passages(args.docs, args.embedding_model)
    store.add_documents([Document(page_content=t, metadata={"source": s}) for t, s in passages])

    candidates = store.similarity_search(args.question, k=10, ranker_type="rrf", ranker_params={"k": 60})
    reranker = Qwen3Rerank(model=args.reranker_model, top_n=3, **where(args, args.reranker_url))
    best = reranker.compress_documents(candidates, args.question)
    sources = [
        {"text": d.page_content, "source": d.metadata["source"], "score": d.metadata["relevance_score"]} for d in best
    ]
    print(json.dumps({"candidates": len(candidates), "sources": sources}, indent=2))


if __name__ == "__main__":
    main()
