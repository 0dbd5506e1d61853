"""Exceptions of the package that callers may want to catch by type."""

from __future__ import annotations


class ServerError(RuntimeError):
    """A model server could not be reached, timed out, or failed a request; the message names the URL."""


class QueryTooLongError(ValueError):
    """The instruction and query alone fill a reranker's ``max_length``, leaving no room for a document.

    Attributes:
        tokens: The tokens the instruction and query take with the prompt template (at least, if ``truncated``).
        limit: The reranker's ``max_length``.
        truncated: The query was read only as far as ``limit``: it takes more than ``tokens``.
    """

    def __init__(self, tokens: int, limit: int, truncated: bool) -> None:
        self.tokens, self.limit, self.truncated = tokens, limit, truncated
        super().__init__(
            f"the instruction and query take {'at least ' if truncated else ''}{tokens} tokens with the prompt "
            f"template, leaving no room for a document within max_length={limit}; shorten them or raise max_length"
        )
