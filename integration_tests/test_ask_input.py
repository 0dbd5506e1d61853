"""What `qwen3-rag ask` takes as a question: usage errors before anything loads, stdin, and questions too long."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qwen3_retrieval.cli import main
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline


@pytest.mark.parametrize(
    ("question", "said"),
    [("", "the question is empty"), ("  \t\n", "the question is empty"),
     ("\x01\x02\x1b\x7f", "the question is only spaces and control characters")],
)  # fmt: skip
def test_a_question_with_nothing_to_search_for_is_a_usage_error(
    question: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: the empty question exited 1 after 5.6 s of loading; control characters returned 3 arbitrary sources.
    with pytest.raises(SystemExit) as stop:
        main(["ask", question, "--uri", str(tmp_path / "none.db")])
    assert stop.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(RagError, match=said):
        RagPipeline(RagConfig(uri=str(tmp_path / "none.db"))).retrieve(question)
    assert not (tmp_path / "none.db").exists()


def test_top_n_above_the_candidates_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:  # before: silently capped at --candidates
        main(["ask", "gravity", "--uri", str(tmp_path / "none.db"), "--top-n", "100000"])
    assert stop.value.code == 2
    assert "--top-n 100000 is more than --candidates 10" in capsys.readouterr().err
    with pytest.raises(RagError, match="--top-n 11 is more than --candidates 10; raise --candidates to 11"):
        RagPipeline(RagConfig(uri=str(tmp_path / "none.db"))).retrieve("gravity", top_n=11)


@pytest.fixture
def indexed(tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path]) -> Iterator[RagConfig]:
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu",
                      reranker_model=str(checkpoints["reranker"]))  # fmt: skip
    with RagPipeline(where) as rag:
        rag.index([docs_folder])
    yield where


def test_ask_dash_reads_the_question_from_stdin(
    indexed: RagConfig, models: list[str], reranker_args: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ask = ["--uri", indexed.uri, *models, *reranker_args, "--json", "--no-llm"]
    assert main(["ask", "What is the capital of China?", *ask]) == 0
    expected = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of China?"))
    assert main(["ask", "-", *ask]) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_a_question_too_long_to_rerank_says_to_shorten_it(indexed: RagConfig) -> None:
    question = "gravity " * 40_000  # far more tokens than the reranker reads (the embedding reads its prefix)
    # Before: "... shorten them or raise max_length", an option the command does not have.
    with RagPipeline(indexed) as rag, pytest.raises(RagError) as error:
        rag.retrieve(question)
    message = str(error.value)
    assert message.startswith("the question is too long to rerank: with the reranker's instruction and prompt it ")
    assert message.endswith(" tokens, and the reranker reads 8192; shorten it") and "max_length" not in message


class _Busy(BaseHTTPRequestHandler):
    """A model hub that says it is busy, so huggingface_hub retries (and logs each retry) before giving up."""

    def _busy(self) -> None:
        self.send_response(429)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _busy

    def log_message(self, *args: object) -> None:
        pass


def test_a_model_hub_that_cannot_be_reached_is_one_line(tmp_path: Path, docs_folder: Path) -> None:
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "HF_HOME": str(tmp_path / "hf")}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_VERBOSITY"):
        env.pop(name, None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "qwen3_retrieval.cli", "index", str(docs_folder), "--uri", str(tmp_path / "r.db")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
    finally:
        hub.shutdown()
    # Before: huggingface_hub's retries came first, two lines each ("... thrown while requesting", "Retrying in").
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("qwen3-rag: error: could not load model"), (
        done.stderr
    )
