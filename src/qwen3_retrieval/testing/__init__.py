"""Small random-weight Qwen3 checkpoints for offline tests, demos and benchmarks.

Nothing here touches the network. A byte-level BPE tokenizer is trained on a built-in corpus with Qwen's
pre-tokenizer, its special tokens, single-token ``yes``/``no`` and (for the embedding model) the post-processor
that appends ``<|endoftext|>``, as the real tokenizers have. Models get the real Qwen3 architecture with random
weights, either tiny (fast tests) or in the real 0.6B shape (speed work: speed does not depend on weight values).
:func:`make_vl_checkpoint` builds Qwen3-VL-Embedding / Qwen3-VL-Reranker ones (tiny, or the 2B shape).

Example:
    >>> from qwen3_retrieval.testing import make_embedding_checkpoint, make_reranker_checkpoint
    >>> emb_dir = make_embedding_checkpoint("/tmp/qwen3-emb-tiny")       # doctest: +SKIP
    >>> rr_dir = make_reranker_checkpoint("/tmp/qwen3-rr-tiny")           # doctest: +SKIP
"""

from qwen3_retrieval.testing.checkpoints import (
    RERANKER_CHAT_TEMPLATE,
    SHAPES,
    make_embedding_checkpoint,
    make_reranker_checkpoint,
    tiny_checkpoint,
)
from qwen3_retrieval.testing.images import random_image
from qwen3_retrieval.testing.tokenizer import SPECIAL_TOKENS, build_tokenizer
from qwen3_retrieval.testing.vl_checkpoints import make_vl_checkpoint, tiny_vl_checkpoint

__all__ = [
    "RERANKER_CHAT_TEMPLATE",
    "SHAPES",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "make_embedding_checkpoint",
    "make_reranker_checkpoint",
    "make_vl_checkpoint",
    "random_image",
    "tiny_checkpoint",
    "tiny_vl_checkpoint",
]
