"""The exact prompt formats of the Qwen3 model cards.

Every string here is byte-for-byte the one in the official recipes; tests compare against independently written
copies, so a changed separator or missing space fails loudly.
"""

from __future__ import annotations

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"

MIN_DIMENSIONS = 32
"""The smallest Matryoshka size the model cards support."""

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
"""The task the model cards use for web-search-style retrieval, for both embedding queries and reranking."""

EOS_TOKEN = "<|endoftext|>"
"""The token the embedding models pool on. Also the pad token, which is why pooling uses the attention mask."""

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
YES_TOKEN = "yes"
NO_TOKEN = "no"


def embedding_query(query: str, instruction: str) -> str:
    """Return the text an embedding model sees for a query (no space after ``Query:``, as in the model card).

    An empty instruction means "no instruction": the query is embedded as it is.
    """
    if not instruction:
        return query
    return f"Instruct: {instruction}\nQuery:{query}"


def rerank_head(instruction: str, query: str) -> str:
    """Return the part of the reranker's user turn that every document of one query shares.

    The model card writes ``<Instruct>: {i}\\n<Query>: {q}\\n<Document>: {d}``. The text is cut just before the
    space that precedes the document: Qwen's pre-tokenizer always splits there, so tokenizing the head and
    ``" " + document`` separately gives exactly the tokens of the whole string, and the document alone can be
    truncated or swapped while the head is reused.
    """
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>:"


def rerank_document(document: str) -> str:
    """Return the document part of the reranker's user turn (see :func:`rerank_head`)."""
    return f" {document}"
