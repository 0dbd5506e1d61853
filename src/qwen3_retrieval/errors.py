"""Exceptions of the package that callers may want to catch by type."""

from __future__ import annotations


class ServerError(RuntimeError):
    """A model server could not be reached, timed out, or failed a request; the message names the URL."""
