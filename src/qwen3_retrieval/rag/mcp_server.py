"""``qwen3-rag mcp``: the index as Model Context Protocol tools over stdio (``search`` and ``ask``).

Desktop assistants and agent frameworks start this command as a subprocess and call its tools; the official MCP
Python SDK speaks the protocol. The models load before the first message is read, so a missing index or model
ends the process with one line on stderr instead of a tool that fails every call.

stdout carries the protocol and nothing else: the process's file descriptor 1 is pointed at stderr while it
runs, and the SDK writes to a copy of the original, so a library that prints (or C code that writes to fd 1)
cannot corrupt a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, Literal

from qwen3_retrieval.errors import ServerError
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline
from qwen3_retrieval.rag.serve import Served, ServeOptions

INSTRUCTIONS = (
    "Search a document index built with qwen3-rag. `search` returns the passages that best answer a question, "
    "reranked, with their files; `ask` also writes an answer that cites them as [n] (when the server has a chat "
    "model)."
)


def build_server(served: Served) -> Any:
    """The MCP server with the two tools, over the shared pipeline."""
    from mcp.server.mcpserver import MCPServer

    pipeline, options = served.pipeline, served.options
    server = MCPServer("qwen3-rag", instructions=INSTRUCTIONS, log_level="ERROR")

    async def retrieve(question: str, top_n: int, candidates: int, mode: str) -> list[Any]:
        with _said():
            if candidates > options.max_inputs:
                raise RagError(f"candidates {candidates} is over the server's limit of {options.max_inputs}")
            return await asyncio.wait_for(
                pipeline.aretrieve(question, candidates=candidates, top_n=top_n, mode=mode), options.request_timeout
            )

    @server.tool()
    async def search(
        question: str, top_n: int = 3, candidates: int = 10, mode: Literal["hybrid", "dense"] = "hybrid"
    ) -> dict[str, Any]:
        """Find the passages of the indexed documents that best answer a question, best first.

        Args:
            question: What to look for, in words.
            top_n: Passages to return.
            candidates: Passages retrieved before reranking (at least top_n).
            mode: "hybrid" (meaning and keywords) or "dense" (meaning alone).
        """
        sources = await retrieve(question, top_n, candidates, mode)
        return {"sources": [s.as_dict() for s in sources]}

    @server.tool()
    async def ask(
        question: str, top_n: int = 3, candidates: int = 10, mode: Literal["hybrid", "dense"] = "hybrid"
    ) -> dict[str, Any]:
        """Answer a question from the indexed documents, citing the passages used as [n].

        The answer is null when the server has no chat model (no OPENAI_API_KEY); the sources are there either way.

        Args:
            question: The question, in words.
            top_n: Passages the answer may cite.
            candidates: Passages retrieved before reranking (at least top_n).
            mode: "hybrid" (meaning and keywords) or "dense" (meaning alone).
        """
        sources = await retrieve(question, top_n, candidates, mode)
        answer = None
        if not options.no_llm and os.environ.get("OPENAI_API_KEY") and sources:
            with _said():
                answer = await asyncio.to_thread(
                    pipeline.answer,
                    question,
                    sources,
                    model=options.llm_model,
                    timeout=options.llm_timeout,
                    images=False,
                )
        return {"answer": answer, "sources": [s.as_dict() for s in sources]}

    return server


@contextlib.contextmanager
def _said() -> Iterator[None]:
    """A problem the caller can fix reaches the agent as its one line (the SDK hides other exceptions' text)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except asyncio.TimeoutError:
        raise ToolError("the search did not finish in time; try again, or ask for fewer candidates") from None
    except (RagError, ServerError, ValueError, TypeError) as err:
        raise ToolError(str(err).replace("--top-n", "top_n").replace("--candidates", "candidates")) from None


def run_mcp(config: RagConfig, options: ServeOptions) -> int:
    """Serve the tools on stdin/stdout until the client closes them."""
    with _protocol_stdout(), RagPipeline(config) as pipeline:
        server = build_server(Served(pipeline, options))
        print(f"qwen3-rag: MCP tools search and ask over {config.collection!r} on stdio", file=sys.stderr, flush=True)
        server.run("stdio")
    return 0


@contextlib.contextmanager
def _protocol_stdout() -> Iterator[None]:
    """``sys.stdout`` is the protocol's (a copy of fd 1); fd 1 itself goes to stderr."""
    sys.stdout.flush()
    protocol = os.dup(1)
    os.dup2(2, 1)
    saved = sys.stdout
    sys.stdout = open(protocol, "w", encoding="utf-8", closefd=True)  # noqa: SIM115  # closed below
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(protocol, 1)
        sys.stdout.close()
        sys.stdout = saved
