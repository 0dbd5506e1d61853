"""``qwen3-rag mcp``: the MCP SDK's own stdio client starts our server as a subprocess and calls both tools."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline
from test_serve import ANSWER, fake_chat

TOL = 1e-5


async def test_search_and_ask_tools_over_stdio(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "milvus.md").write_text("# Milvus\n\nMilvus is a vector database built for similarity search.\n")
    (docs / "capital.md").write_text("# Capitals\n\nThe capital of China is Beijing.\n")
    embedding, reranker = str(checkpoints["embedding"]), str(checkpoints["reranker"])
    config = RagConfig(uri=str(tmp_path / "m.db"), embedding_model=embedding, reranker_model=reranker, device="cpu")
    with RagPipeline(config) as rag:
        rag.index([docs])
        expected = [s.as_dict() for s in rag.retrieve("What is Milvus?", candidates=2, top_n=2)]
    chat, chat_url = fake_chat()
    server = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "qwen3_retrieval.cli",
            "mcp",
            "--uri",
            config.uri,
            "--embedding-model",
            embedding,
            "--reranker-model",
            reranker,
            "--device",
            "cpu",
        ],
        env={**os.environ, "OPENAI_API_KEY": "sk-chat", "OPENAI_BASE_URL": chat_url},
    )
    try:
        with (tmp_path / "mcp.log").open("w") as log:
            async with stdio_client(server, errlog=log) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                assert set(tools) == {"search", "ask"}
                assert "question" in tools["search"].input_schema["properties"]
                found = await session.call_tool("search", {"question": "What is Milvus?", "candidates": 2, "top_n": 2})
                assert not found.is_error, found.content
                same(found.structured_content["sources"], expected)
                asked = await session.call_tool("ask", {"question": "What is Milvus?", "candidates": 2, "top_n": 2})
                assert not asked.is_error, asked.content
                assert asked.structured_content["answer"] == ANSWER
                same(asked.structured_content["sources"], expected)
                bad = await session.call_tool("search", {"question": "  "})
                assert bad.is_error and "the question is empty" in str(bad.content)
    finally:
        chat.shutdown()
    assert "qwen3-rag: MCP tools" in (tmp_path / "mcp.log").read_text()


def same(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [(s["source"], s["text"]) for s in got] == [(s["source"], s["text"]) for s in expected]
    assert [s["score"] for s in got] == pytest.approx([s["score"] for s in expected], abs=TOL)
