"""RAG with LangChain: Qwen3 embeddings into Milvus, retrieve 10, rerank to 3 with Qwen3, answer with OpenAI.

    python examples/langchain_milvus_rag.py docs/ --question "What is Milvus?"

Needs OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible server). Prints {"answer", "sources"}.
"""

from __future__ import annotations

import json

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from langchain_openai import ChatOpenAI

from _common import load_passages, parser, where
from qwen3_retrieval.langchain import Qwen3Embeddings, Qwen3Rerank
from qwen3_retrieval.milvus import langchain_store
from qwen3_retrieval.rag.answer import SYSTEM_PROMPT, quoted

# qwen3-rag's prompt: passages inside delimiters their text cannot close, under an instruction that they are
# quoted data, never instructions (a retrieved document may try to give orders).
PROMPT = ChatPromptTemplate.from_messages(
    [("system", SYSTEM_PROMPT), ("human", "<passages>\n{context}\n</passages>\n\nQuestion: {question}")]
)


def format_docs(docs: list[Document]) -> str:
    return "\n".join(
        f'<passage n="{n}" source="{quoted(d.metadata["source"])}">\n{quoted(d.page_content)}\n</passage>'
        for n, d in enumerate(docs, 1)
    )


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    embeddings = Qwen3Embeddings(model=args.embedding_model, **where(args, args.embedding_url))
    store = langchain_store(embeddings, uri=args.uri, drop_old=True)
    passages = load_passages(args.docs, args.embedding_model)
    store.add_documents([Document(page_content=t, metadata={"source": s}) for t, s in passages])

    retriever = ContextualCompressionRetriever(
        base_retriever=store.as_retriever(search_kwargs={"k": 10}),
        base_compressor=Qwen3Rerank(model=args.reranker_model, top_n=3, **where(args, args.reranker_url)),
    )
    answer = PROMPT | ChatOpenAI(model=args.llm_model, temperature=0) | StrOutputParser()
    chain = RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(
        answer=lambda x: answer.invoke({"context": format_docs(x["docs"]), "question": x["question"]})
    )
    result = chain.invoke(args.question)
    sources = [
        {"text": d.page_content, "source": d.metadata["source"], "score": d.metadata["relevance_score"]}
        for d in result["docs"]
    ]
    print(json.dumps({"answer": result["answer"], "sources": sources}, indent=2))


if __name__ == "__main__":
    main()
