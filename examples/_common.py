"""Argument parsing and document loading shared by the examples (the RAG wiring itself is in each example)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from qwen3_retrieval.rag.passages import find_files, split_passages


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("docs", nargs="+", help="Markdown/text files or folders to index")
    p.add_argument("--question", required=True, help="the question to answer")
    p.add_argument("--uri", default="./example_milvus.db", help="Milvus Lite path or http(s)://host:19530")
    p.add_argument("--embedding-model", default="Qwen/Qwen3-Embedding-0.6B", help="hub id or local folder")
    p.add_argument("--reranker-model", default="Qwen/Qwen3-Reranker-0.6B", help="hub id or local folder")
    p.add_argument("--llm-model", default="gpt-4o-mini", help="OpenAI (or compatible) chat model")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--embedding-url", help="a vLLM embedding server (http://host:8000/v1) instead of this process")
    p.add_argument("--reranker-url", help="a vLLM reranker server (http://host:8001/v1) instead of this process")
    return p


def where(args: argparse.Namespace, url: str | None) -> dict[str, Any]:
    """Where a model runs: this process (on --device), or the vLLM server at ``url`` (key from $VLLM_API_KEY)."""
    if url:
        return {"base_url": url, "api_key": os.environ.get("VLLM_API_KEY") or None}
    return {"device": args.device}


def load_passages(paths: list[str]) -> list[tuple[str, str]]:
    """Return (text, source) for every passage of the given files, split on headings."""
    return [(p.text, p.source) for path in find_files(paths) for p in split_passages(path.read_text(), str(path), 1500)]
