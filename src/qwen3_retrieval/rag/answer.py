"""Asking an OpenAI-compatible chat model to answer from the reranked passages, with citations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.store import Hit

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages you are given. Cite the passages you use as [n]. "
    "If the passages do not contain the answer, say that you do not know."
)


def build_messages(question: str, passages: Sequence[Hit]) -> list[dict[str, str]]:
    """Return the chat messages: the passages, numbered from 1 best first with their sources, then the question."""
    context = "\n\n".join(
        f"[{n}] (source: {p.source}{' § ' + p.heading if p.heading else ''})\n{p.text}"
        for n, p in enumerate(passages, start=1)
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Passages:\n\n{context}\n\nQuestion: {question}"},
    ]


def ask_chat_model(question: str, passages: Sequence[Hit], *, model: str, timeout: float) -> str:
    """Return the chat model's answer. Uses ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` from the environment."""
    import openai

    client = openai.OpenAI(timeout=timeout, max_retries=0)
    messages: Any = build_messages(question, passages)  # plain dicts are what the wire format takes
    try:
        response = client.chat.completions.create(model=model, messages=messages, temperature=0)
    except openai.APITimeoutError as err:
        raise RagError(f"the chat model did not answer within {timeout:g}s (--llm-timeout)") from err
    except openai.APIStatusError as err:
        raise RagError(f"the chat model refused the request: HTTP {err.status_code}: {_reason(err)}") from err
    except openai.APIConnectionError as err:
        raise RagError(f"cannot reach the chat model at {client.base_url}: {err}") from err
    return response.choices[0].message.content or ""


def _reason(err: object) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(err, "message", err))
