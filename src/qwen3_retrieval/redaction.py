"""Keeping secrets out of messages: API keys, tokens and the passwords inside URLs.

Secrets reach the package in three ways: as keys (``api_key=``, ``VLLM_API_KEY``, ``OPENAI_API_KEY``), as a
Milvus token, and inside a URL (``http://user:password@host``). Servers and proxies may echo them back in an
error body (a debug server repeating the request headers). Every message built from a URL or from a server's
words goes through :func:`mask` with the secrets in play, and URLs are shown by :func:`redact_url`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# A bearer token echoed back is a secret whatever it is, even one that is not ours.
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Return ``url`` without its ``user:password@`` part, and that part (None if there is none)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address is written in brackets
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc)), (parts.username or "", parts.password or "")


def without_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (options by name) with ``api_key`` dropped and the password of ``base_url`` taken out.

    Secrets never travel in a pickle (LlamaIndex's workers, multiprocessing) or a dump: a copy built from these
    values reads ``VLLM_API_KEY`` where it is built.
    """
    values = {**values, "api_key": None}
    if values.get("base_url") is not None:
        values["base_url"] = split_credentials(values["base_url"])[0]
    return values


def redact_url(url: str) -> str:
    """Return ``url`` with any ``user:password@`` replaced by ``***@``, for messages and ``repr``."""
    bare, credentials = split_credentials(url)
    if credentials is None:
        return url
    parts = urlsplit(bare)
    return urlunsplit(parts._replace(netloc=f"{MASK}@{parts.netloc}"))


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """Return ``text`` with every given secret, and any ``Bearer``/``Basic`` credential, replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):  # longest first: one may hold another
        text = text.replace(secret, MASK)
    return _BEARER.sub(lambda found: f"{found.group(1)} {MASK}", text)


def url_secrets(url: str | None) -> list[str]:
    """The password of a URL's ``user:password@`` part (as written and percent-decoded), to pass to :func:`mask`."""
    if not url:
        return []
    parts = urlsplit(url)
    raw = parts.netloc.rpartition("@")[0].partition(":")[2] if "@" in parts.netloc else ""
    return [s for s in (raw, parts.password) if s]


def environment_secret(name: str) -> str | None:
    """The secret in environment variable ``name``, checked by :func:`check_secret`; None if it is not set."""
    value = os.environ.get(name) or None
    return check_secret(value, name) if value is not None else None


def check_secret(value: object, name: str) -> str:
    """Return ``value`` if it can be sent as an HTTP header value; raise naming the problem, never the value.

    A key read from a file often ends in a newline; sent as is, HTTP libraries reject the header with an error
    that quotes it, and it looks like a network failure.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is empty; pass the key, or None for a server without one")
    for position, char in enumerate(value):
        if not "\x21" <= char <= "\x7e":
            what = "a line break" if char in "\r\n" else "a space" if char.isspace() else f"character U+{ord(char):04X}"
            raise ValueError(
                f"{name} contains {what} at position {position} of {len(value)}, which no HTTP header may carry; "
                "strip it (a key read from a file often ends in a newline: use .strip())"
            )
    return value


def check_server_credentials(base_url: str, api_key: str | None) -> None:
    """Raise ``ValueError`` if both a key and a URL password are given: one Authorization header carries one."""
    if api_key is not None and split_credentials(base_url)[1] is not None:
        raise ValueError(
            "base_url holds a user:password and api_key= is set, but one Authorization header cannot carry "
            "both; pass the key alone (vLLM's --api-key) or the URL's password alone (a proxy's)"
        )
