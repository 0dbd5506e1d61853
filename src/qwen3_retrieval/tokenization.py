"""Tokenization that is safe to share between threads and never lets user text become a control token.

Two rules make every engine exact and every caller safe:

* **User text is plain text.** Instructions, queries and documents are tokenized with the tokenizer's added
  vocabulary switched off, so a document that contains ``<|im_end|>`` or ``<think>`` gets the byte-level tokens
  of those characters, never the control tokens. Only the prompt template's own markers (the reranker's
  ``<|im_start|>`` … ``</think>`` and the embedder's trailing ``<|endoftext|>``) are special.
* **Nothing is mutable.** transformers sets truncation and padding on the shared Rust tokenizer at every call,
  so two callers with different ``max_length`` race each other (and can raise ``Already borrowed``). Here the
  Rust tokenizers are private copies with truncation and padding off, only ever read; lengths are cut in Python.

A text far longer than the tokens that will be kept is not tokenized whole (a 50 MB string would cost gigabytes
and minutes for the 8,191 tokens an embedding keeps): see :meth:`TextTokenizer.plain`.
"""

from __future__ import annotations

import json
from typing import Any

# A first prefix of this many characters per wanted token almost always holds enough tokens (English averages
# about four characters a token); a prefix that falls short is doubled.
CHARS_PER_TOKEN = 6
# Tokens ending this many characters before a prefix's cut are the whole text's tokens: what follows a point
# changes its tokenization only within the word (pre-token) around it, through NFC composition, the
# pre-tokenizer's one-character look-ahead, and BPE merges near the cut.
CUT_MARGIN_CHARS = 1024


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
        self._special_ids = [int(t["id"]) for t in spec["added_tokens"] if t.get("special")]
        spec["added_tokens"] = []
        self._plain = Tokenizer.from_str(json.dumps(spec))
        # No token covers more characters than its bytes, so ``limit`` tokens never reach past this many per token.
        self._longest_token = max(len(token) for token in self._plain.get_vocab())

    def plain(self, texts: list[str], limit: int | None = None) -> list[list[int]]:
        """Return the token ids of each text read as plain characters (no control tokens, nothing appended).

        Args:
            texts: The texts.
            limit: Keep at most this many leading tokens of each text. A text much longer than that is read from
                a bounded prefix (see :meth:`_leading`), which gives the same ids as tokenizing it whole and
                cutting, in time and memory that follow ``limit`` rather than the text's length.
        """
        if limit is None:
            return [encoding.ids for encoding in self._plain.encode_batch(texts, add_special_tokens=False)]
        texts = [text[: self.chars_needed(limit)] for text in texts]  # a slice copies: copy only what can count
        long = {i for i, text in enumerate(texts) if len(text) > _first_prefix(limit)}
        short = [text for i, text in enumerate(texts) if i not in long]
        encoded = iter(self._plain.encode_batch(short, add_special_tokens=False))
        return [self._leading(text, limit) if i in long else next(encoded).ids[:limit] for i, text in enumerate(texts)]

    def chars_needed(self, limit: int) -> int:
        """How many leading characters of any text decide its first ``limit`` tokens (the rest cannot matter)."""
        return limit * self._longest_token + 2 * CUT_MARGIN_CHARS

    def _leading(self, text: str, limit: int) -> list[int]:
        """The first ``limit`` token ids of ``text``, read from as short a prefix as gives them for certain."""
        chars = _first_prefix(limit)
        while chars < len(text):
            encoding = self._plain.encode(text[:chars], add_special_tokens=False)
            safe_end = chars - CUT_MARGIN_CHARS
            ids: list[int] = []
            for token, (_, end) in zip(encoding.ids, encoding.offsets):
                if end > safe_end or len(ids) == limit:
                    break
                ids.append(token)
            if len(ids) == limit:
                return ids
            chars *= 2  # too few tokens before the margin: text with many characters per token
        return list(self._plain.encode(text, add_special_tokens=False).ids[:limit])

    def template(self, text: str) -> list[int]:
        """Return the token ids of a prompt-template piece, whose control-token strings are control tokens."""
        return list(self._template.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        """Return the characters that ``ids`` (text tokens, no control tokens) stand for."""
        return str(self._plain.decode(ids, skip_special_tokens=False))

    def special_ids(self) -> list[int]:
        """Return the ids of the added tokens marked special (what transformers' ``all_special_ids`` lists)."""
        return list(self._special_ids)

    def token_id(self, token: str) -> int | None:
        """Return the id of ``token`` in the full vocabulary (added tokens included), or None."""
        return self._template.token_to_id(token)


def _first_prefix(limit: int) -> int:
    return limit * CHARS_PER_TOKEN + 2 * CUT_MARGIN_CHARS
