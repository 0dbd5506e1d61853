"""Tokenization that is safe to share between threads and never lets user text become a control token.

Two rules make every engine exact and every caller safe:

* **User text is plain text.** Instructions, queries and documents are tokenized with the tokenizer's added
  vocabulary switched off, so a document that contains ``<|im_end|>`` or ``<think>`` gets the byte-level tokens
  of those characters, never the control tokens. Only the prompt template's own markers (the reranker's
  ``<|im_start|>`` … ``</think>`` and the embedder's trailing ``<|endoftext|>``) are special.
* **Nothing is mutable.** transformers sets truncation and padding on the shared Rust tokenizer at every call,
  so two callers with different ``max_length`` race each other (and can raise ``Already borrowed``). Here the
  Rust tokenizers are private copies with truncation and padding off, only ever read; lengths are cut in Python.
"""

from __future__ import annotations

import json
from typing import Any


class TextTokenizer:
    """Read-only tokenization of one checkpoint, built once at load and shared by every caller.

    Args:
        hf_tokenizer: A transformers fast tokenizer (one with ``tokenizer.json``).

    Raises:
        ValueError: If the tokenizer has no fast (Rust) backend.
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"{type(hf_tokenizer).__name__} is not a fast tokenizer; the checkpoint needs its tokenizer.json"
            )
        spec = json.loads(backend.to_str())
        spec["truncation"] = None
        spec["padding"] = None
        self._template = Tokenizer.from_str(json.dumps(spec))
        # Without its added vocabulary the tokenizer cannot match "<|im_end|>", "<think>" and the like: they go
        # through the normaliser, the pre-tokenizer and the BPE model as the characters they are.
        spec["added_tokens"] = []
        self._plain = Tokenizer.from_str(json.dumps(spec))

    def plain(self, texts: list[str]) -> list[list[int]]:
        """Return the token ids of each text read as plain characters (no control tokens, nothing appended)."""
        return [encoding.ids for encoding in self._plain.encode_batch(texts, add_special_tokens=False)]

    def template(self, text: str) -> list[int]:
        """Return the token ids of a prompt-template piece, whose control-token strings are control tokens."""
        return list(self._template.encode(text, add_special_tokens=False).ids)

    def token_id(self, token: str) -> int | None:
        """Return the id of ``token`` in the full vocabulary (added tokens included), or None."""
        return self._template.token_to_id(token)
