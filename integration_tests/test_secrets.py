"""No secret reaches any output of `qwen3-rag`: stdout, stderr, log records, exception messages.

A loopback server plays the worst kind of server: every request is refused with an error body that repeats the
request's headers, as debugging proxies do. Every configured secret is then searched for in everything printed
and logged.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from qwen3_retrieval.cli import main

SECRETS = ("sk-vllm-SECRET", "pw-vllm-SECRET", "sk-openai-SECRET", "pw-openai-SECRET")


@pytest.fixture
def echoing() -> Iterator[str]:
    """A server that refuses every POST, quoting the request's headers (status 500; 400 for chat)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = "; ".join(f"{name}: {value}" for name, value in self.headers.items())
            data = json.dumps({"error": {"message": f"cannot serve this request ({headers})"}}).encode()
            self.send_response(400 if self.path.endswith("/chat/completions") else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_no_secret_in_any_output(
    tmp_path: Path,
    docs_folder: Path,
    models: list[str],
    reranker_args: list[str],
    echoing: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    uri = str(tmp_path / "rag.db")
    assert main(["index", str(docs_folder), "--uri", uri, *models]) == 0
    capsys.readouterr()
    ask = ["ask", "gravity", "--uri", uri, *models, *reranker_args]
    outputs: list[str] = []

    def run(*extra: str) -> int:
        status = main([*ask, *extra])
        out, err = capsys.readouterr()
        outputs.extend([out, err])
        assert err.count("\n") == 1 and err.startswith("qwen3-rag: error: "), err  # one line, whatever failed
        return status

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "sk-vllm-SECRET")
    assert run("--reranker-url", f"http://{echoing}/v1") == 1  # the vLLM server echoes the bearer key
    assert "HTTP 500" in outputs[-1] and "Authorization: Bearer ***" in outputs[-1]
    # ... and a URL's password, which wins over VLLM_API_KEY (one Authorization header carries one of them)
    assert run("--reranker-url", f"http://ann:pw-vllm-SECRET@{echoing}/v1") == 1
    assert "Authorization: Basic ***" in outputs[-1]
    monkeypatch.setenv("VLLM_API_KEY", "sk-vllm-SECRET\n")  # a key read from a file with its newline
    assert run("--reranker-url", f"http://{echoing}/v1") == 1
    assert "contains a line break" in outputs[-1]
    monkeypatch.delenv("VLLM_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-SECRET")  # the chat model echoes its key and URL password
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://bob:pw-openai-SECRET@{echoing}/v1")
    assert run() == 1
    assert "the chat model refused the request: HTTP 400" in outputs[-1] and "Sources" in outputs[-2]

    everything = "\n".join([*outputs, caplog.text, *(str(r.args) for r in caplog.records)])
    assert not [secret for secret in SECRETS if secret in everything], everything
