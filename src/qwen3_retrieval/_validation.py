"""Checks on user input, shared by the embedder, the reranker and the adapters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set


def check_unicode(text: str, what: str) -> str:
    """Return ``text`` if it is valid Unicode; raise ``ValueError`` naming where a lone surrogate sits.

    Python strings may hold lone surrogates (a shell argument or file name in another encoding arrives as
    ``'caf\\udce9'``); no tokenizer can read them.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} is not valid Unicode: it holds a lone surrogate (U+{ord(text[err.start]):04X}) at character "
            f"{err.start}, as bytes decoded with errors='surrogateescape' do; decode the bytes with their real "
            "encoding, or with errors='replace'"
        ) from None
    return text


def check_texts(texts: Iterable[str], what: str = "texts") -> list[str]:
    """Return ``texts`` as a list, raising ``TypeError`` that names the first item that is not a string."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single {type(texts).__name__}; wrap it: [text]")
    if isinstance(texts, (Mapping, Set)):  # iterating would take a dict's keys, or a set's items in no set order
        raise TypeError(f"{what} must be a list of strings, got a {type(texts).__name__}; pass a list (list(...))")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] is a {type(item).__name__}, expected str")
        check_unicode(item, f"{what}[{i}]")
    return items


def check_query(query: object, what: str = "query") -> str:
    """Return ``query`` if it is a non-blank string; raise ``TypeError`` or ``ValueError`` otherwise."""
    if not isinstance(query, str):
        raise TypeError(f"{what} must be a str, got {type(query).__name__}")
    check_unicode(query, what)
    if not query.strip():
        raise ValueError(f"{what} is empty; pass the question or search text to rank the documents against")
    return query


def check_instruction(instruction: object) -> str:
    """Return ``instruction`` if it is a string; raise ``TypeError`` otherwise."""
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    return check_unicode(instruction, "instruction")


def check_call_instruction(instruction: object) -> str | None:
    """A call's ``instruction=``: None (the object's own) or a string checked by :func:`check_instruction`."""
    return None if instruction is None else check_instruction(instruction)


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int of at least ``minimum``; raise ``ValueError`` or ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_non_negative(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number >= 0; raise ``ValueError`` or ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) < float("inf"):  # NaN fails this too
        raise ValueError(f"{name} must be a finite number of at least 0, got {value!r}")
    return float(value)


def check_positive_number(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (e.g. seconds); raise ``ValueError``/``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number of seconds, got {type(value).__name__}")
    if not 0.0 < float(value) < float("inf"):  # NaN fails this too
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def check_top_n(top_n: int | None) -> int | None:
    """Return ``top_n`` if it is None or an int >= 1; raise otherwise."""
    if top_n is None:
        return None
    return check_positive_int(top_n, "top_n")


def check_base_url(url: object) -> str:
    """Return ``url`` if it is an http(s) URL; raise ``ValueError`` naming the expected form otherwise."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        from qwen3_retrieval.redaction import redact_url

        shown = redact_url(url) if isinstance(url, str) else url
        raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {shown!r}")
    return url


def check_score_threshold(threshold: object) -> float | None:
    """Return ``threshold`` as a float if it is None or a number in [0, 1]; raise otherwise.

    Scores are probabilities, so a threshold outside [0, 1] (or NaN, which no score ever passes) is a mistake.
    """
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"score_threshold must be a number from 0 to 1 or None, got {type(threshold).__name__}")
    if not 0.0 <= float(threshold) <= 1.0:  # NaN fails this too
        raise ValueError(
            f"score_threshold must be from 0 to 1 (scores are probabilities), got {threshold!r}; "
            "use None to keep every document"
        )
    return float(threshold)
