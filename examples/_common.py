"""Argument parsing and document loading shared by the examples (the RAG wiring itself is in each example)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("docs", nargs="+", help="files or folders to index (Markdown, text, PDF, HTML, DOCX)")
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


def load_passages(paths: list[str], embedding_model: str) -> list[tuple[str, str]]:
    """Return (text, source) for every passage of the given files and folders, as ``qwen3-rag index`` cuts them."""
    from transformers import AutoTokenizer

    from qwen3_retrieval.rag.passages import PassageSplitter, Splitting
    from qwen3_retrieval.rag.readers import find_files, read_file, supported

    splitter = PassageSplitter(AutoTokenizer.from_pretrained(embedding_model), Splitting())
    files = [f for raw in paths for f in (find_files(Path(raw)) if Path(raw).is_dir() else supported([Path(raw)]))]
    passages = []
    for file in files:
        try:
            markdown = read_file(file).markdown
        except Exception as err:  # a broken file is skipped, as qwen3-rag skips it
            print(f"skipped {file}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        passages += [(p.text, str(file)) for p in splitter.split(markdown)]
    return passages
