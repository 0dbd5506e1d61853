"""qwen3-rag serve's rules that need no model: the deadline, the error bodies, the key from the environment."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from qwen3_retrieval.cli import build_parser
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.serve import ApiError, ServeOptions, _answering, _validation_message, options_from


async def test_a_request_past_its_deadline_is_504_saying_what_to_change() -> None:
    with pytest.raises(ApiError) as raised:
        await _answering(ServeOptions(request_timeout=0.05), lambda: asyncio.sleep(5))
    assert raised.value.status == 504 and "--request-timeout" in raised.value.message


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        (RagError("--top-n 5 is more than --candidates 3; raise --candidates to 5"), 422,
         "top_n 5 is more than candidates 3; raise candidates to 5"),
        (RagError("there is no index at x.db; run `qwen3-rag index FOLDER` first"), 503, "there is no index"),
        (ValueError("the query must not be empty"), 422, "the query must not be empty"),
    ],
)  # fmt: skip
async def test_library_errors_become_the_status_they_mean(error: Exception, status: int, words: str) -> None:
    async def fail() -> None:
        raise error

    with pytest.raises(ApiError) as raised:
        await _answering(ServeOptions(), fail)
    assert raised.value.status == status and words in raised.value.message


def test_validation_errors_are_one_line_naming_each_field() -> None:
    errors = [{"loc": ("body", "question"), "msg": "Field required"}, {"loc": ("body",), "msg": "bad"}]
    assert _validation_message(errors) == "invalid request: question: Field required; the body: bad"


def test_the_key_comes_from_the_environment_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN3_RAG_API_KEY", "sk-from-env")
    args = build_parser().parse_args(["serve", "--uri", "x.db"])
    options = options_from(args)
    assert options.api_key == "sk-from-env" and "sk-from-env" not in repr(options)
    assert (args.host, args.port, args.allow_index) == ("127.0.0.1", 8000, False)
    given = options_from(build_parser().parse_args(["serve", "--api-key", "sk-given"]))
    assert given.api_key == "sk-given"
