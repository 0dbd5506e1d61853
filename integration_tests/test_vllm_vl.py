"""The Qwen3-VL models on real vLLM servers (CPU build) on 127.0.0.1, equal to the in-process core.

vLLM's ``qwen3_vl`` model needs torchvision, whose registry build needs the registry's (CUDA) torch: that
environment is built as docs/qwen3-vl.md's "vLLM servers" shows (``bash .ci/run`` builds it). Set
``QWEN3_VLLM_VL_PYTHON`` to its python; without it these tests are skipped. Three servers per module, started
with docs/qwen3-vl.md's commands plus test flags (float32, eager mode, a small KV cache) that make the tiny
checkpoints start in seconds; the fixture waits for a real answer from each:

* ``embed``: the plain command, no flag: texts and images need none;
* ``embed-video``: with the two ``--trust-request-*`` flags that videos need (each request carries its frames'
  timing and a chat template that leaves the video's markers to the server);
* ``classify``: the reranker, with the video flags.

A server whose pixel bounds leave out an image's official size is refused by the client (tests/test_vl_http.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import test_rag_pages
from conftest import FakeOpenAI
from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker

pages_folder = test_rag_pages.pages_folder  # the fixture: PDFs (one a scanned page), images and a text file
VLLM_PYTHON = os.environ.get("QWEN3_VLLM_VL_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON, reason="QWEN3_VLLM_VL_PYTHON is not set: no vLLM environment with torchvision (.ci/run builds one)"
)

TOL = 1e-5
MAX_MODEL_LEN = 4096
VIDEO_FLAGS = ("--trust-request-mm-kwargs", "--trust-request-chat-template")
# docs/qwen3-vl.md's reranker command: the LM head's yes/no rows become one label scored sigmoid((W_yes - W_no) . h).
VL_RERANKER_OVERRIDES = {
    "architectures": ["Qwen3VLForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


def picture(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A noisy picture: every pixel matters, so any other resize or crop shows in the vectors."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One ``vllm.entrypoints.openai.api_server`` process serving one VL model on 127.0.0.1."""

    def __init__(self, model: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        args = [
            VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "--runner", "pooling", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
            "--enforce-eager", "--kv-cache-memory-bytes", "134217728", *extra,
        ]  # fmt: skip
        env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, path: str, timeout: float = 600) -> None:
        """Wait until the server answers a real request (``/health`` can say 200 before the engine works)."""
        url = self.url + "/embeddings" if path == "embed" else self.url.removesuffix("/v1") + "/classify"
        body = {"model": self.model_name(), "messages": [{"role": "user", "content": "ready?"}]}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.post(url, json=body, timeout=60).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM did not answer in {timeout} s; see {self.log.name}")

    def model_name(self) -> str:
        return str(self.process.args[4])  # type: ignore[index]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # its own PID, nothing else
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(
    vl_embedding: Path, vl_reranker: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("vllm-vl")
    started = {
        "embed": Server(vl_embedding, logs / "embedding.log"),
        "embed-video": Server(vl_embedding, logs / "embedding-video.log", *VIDEO_FLAGS),
        "classify": Server(
            vl_reranker, logs / "reranker.log", "--hf-overrides", json.dumps(VL_RERANKER_OVERRIDES), *VIDEO_FLAGS
        ),
    }
    try:
        for name, server in started.items():
            server.wait("classify" if name == "classify" else "embed")
        yield {name: server.url for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def inputs() -> list[Any]:
    """Texts, an image, an image with text, several images in one input, and videos as frames."""
    return [
        "A woman playing with her dog on a beach at sunset.",
        "",
        {"image": picture(150, 100, 1)},
        {"text": "an invoice page", "image": picture(90, 70, 2, "RGBA")},
        {"image": [picture(64, 64, 3), picture(40, 120, 4, "L")], "text": ["first", "second"]},
    ]


def videos(folder: Path) -> list[Any]:
    """Videos as frames (an even and an odd count, several pairs), with an image and text, and a video file."""
    return [
        {"video": [picture(64, 64, 5), picture(64, 64, 6)]},
        {"video": [picture(96, 64, 7 + i) for i in range(5)], "text": "a clip", "image": picture(50, 50, 12)},
        {"video": [[picture(64, 96, 13 + i) for i in range(4)], [picture(64, 64, 17), picture(64, 64, 18)]]},
        {"video": str(video_file(folder / "clip.mkv", 12, 6)), "text": "a file"},
    ]


def video_file(path: Path, count: int, fps: int) -> Path:
    """A lossless FFV1 file: every decoder reads back exactly the frames written."""
    import av

    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "bgr0"
        for i in range(count):
            frame = np.asarray(picture(96, 64, 100 + i))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


# --- exactness over HTTP ------------------------------------------------------------------------------------


def test_vl_embeddings_over_http_equal_the_local_core(servers: dict[str, str], vl_embedding: Path) -> None:
    local = Qwen3VLEmbedder(vl_embedding, device="cpu")
    remote = Qwen3VLEmbedder(vl_embedding, base_url=servers["embed"], max_concurrency=3)
    np.testing.assert_allclose(remote.embed(inputs()), local.embed(inputs()), atol=TOL)
    queries = ["Find the invoice", {"image": picture(70, 70, 20), "text": "like this"}]
    np.testing.assert_allclose(remote.embed_queries(queries), local.embed_queries(queries), atol=TOL)
    cut = {"dimensions": 32, "max_pixels": 16 * 32 * 32}  # applied on our side, as in process
    big = [{"image": picture(400, 300, 21)}]
    np.testing.assert_allclose(
        Qwen3VLEmbedder(vl_embedding, base_url=servers["embed"], **cut).embed(big),
        Qwen3VLEmbedder(vl_embedding, device="cpu", **cut).embed(big),
        atol=TOL,
    )


def test_vl_video_embeddings_over_http_equal_the_local_core(
    servers: dict[str, str], vl_embedding: Path, tmp_path: Path
) -> None:
    local = Qwen3VLEmbedder(vl_embedding, device="cpu")
    remote = Qwen3VLEmbedder(vl_embedding, base_url=servers["embed-video"], max_concurrency=2)
    np.testing.assert_allclose(remote.embed(videos(tmp_path)), local.embed(videos(tmp_path)), atol=TOL)
    # The plain command's server takes no video: the error names the flags.
    plain = Qwen3VLEmbedder(vl_embedding, base_url=servers["embed"])
    with pytest.raises(ValueError, match=r"--trust-request-mm-kwargs --trust-request-chat-template"):
        plain.embed(videos(tmp_path)[:1])


def test_vl_scores_over_http_equal_the_local_core(servers: dict[str, str], vl_reranker: Path, tmp_path: Path) -> None:
    local = Qwen3VLReranker(vl_reranker, device="cpu", max_length=1200)
    remote = Qwen3VLReranker(vl_reranker, base_url=servers["classify"], max_length=1200)
    documents = [
        *inputs(),
        *videos(tmp_path)[:2],
        {},
        {"text": " ".join(["sunset over the sea with a dog running"] * 60)},  # cut to max_length
    ]
    queries = [("A dog on a beach", None), ({"image": picture(80, 80, 30), "text": "this"}, "Same"),
               ({"video": [picture(64, 64, 31), picture(64, 64, 32), picture(64, 64, 33)]}, None)]  # fmt: skip
    for query, instruction in queries:
        ours, theirs = remote.score(query, documents, instruction), local.score(query, documents, instruction)
        np.testing.assert_allclose(ours, theirs, atol=TOL)
    assert max(theirs) - min(theirs) > 0.01  # the scores spread: a constant would not pass


def test_both_frameworks_through_the_servers(servers: dict[str, str], vl_embedding: Path, vl_reranker: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    from langchain_core.documents import Document
    from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

    from qwen3_retrieval.langchain import Qwen3VLEmbeddings, Qwen3VLRerank
    from qwen3_retrieval.llama_index import Qwen3VLEmbedding
    from qwen3_retrieval.llama_index import Qwen3VLRerank as LlamaVLRerank

    path = tmp_path / "page.png"
    picture(120, 80, 40).save(path)
    local = Qwen3VLEmbedder(vl_embedding, device="cpu")
    expected = local.embed(["a text", {"image": str(path)}])
    langchain = Qwen3VLEmbeddings(model=str(vl_embedding), base_url=servers["embed"])
    np.testing.assert_allclose(langchain.embed_documents(["a text"])[0], expected[0], atol=TOL)
    np.testing.assert_allclose(langchain.embed_image([str(path)])[0], expected[1], atol=TOL)
    llama: Any = Qwen3VLEmbedding(model_name=str(vl_embedding), base_url=servers["embed"])
    np.testing.assert_allclose(llama.get_image_embedding(str(path)), expected[1], atol=TOL)
    np.testing.assert_allclose(llama.get_text_embedding("a text"), expected[0], atol=TOL)

    query = "a page"
    reranker = Qwen3VLReranker(vl_reranker, device="cpu")
    truth = reranker.score(query, ["a text", {"text": "caption", "image": str(path)}])
    documents = [Document(page_content="a text"), Document(page_content="caption", metadata={"image": str(path)})]
    compressed = Qwen3VLRerank(model=str(vl_reranker), base_url=servers["classify"], top_n=2).compress_documents(
        documents, query
    )
    got = {d.page_content: d.metadata["relevance_score"] for d in compressed}
    assert got == pytest.approx({"a text": truth[0], "caption": truth[1]}, abs=TOL)
    nodes = [NodeWithScore(node=TextNode(text="a text")), NodeWithScore(node=ImageNode(image_path=str(path)))]
    ranked = LlamaVLRerank(model=str(vl_reranker), base_url=servers["classify"], top_n=2).postprocess_nodes(
        nodes, QueryBundle(query)
    )
    image_truth = reranker.score(query, [{"image": str(path)}])[0]
    scores = {type(n.node).__name__: n.score for n in ranked}
    assert scores == pytest.approx({"TextNode": truth[0], "ImageNode": image_truth}, abs=TOL)
    # They ask the server, not a model of their own: a name it does not serve is its 404.
    wrong = {"base_url": servers["embed"], "served_model_name": "not-served"}
    with pytest.raises(ValueError, match="does not serve model"):
        Qwen3VLEmbeddings(model=str(vl_embedding), **wrong).embed_image([str(path)])
    with pytest.raises(ValueError, match="does not serve model"):
        Qwen3VLEmbedding(model_name=str(vl_embedding), **wrong).get_image_embedding(str(path))
    wrong["base_url"] = servers["classify"]
    with pytest.raises(ValueError, match="does not serve model"):
        Qwen3VLRerank(model=str(vl_reranker), **wrong).compress_documents(documents, query)
    with pytest.raises(ValueError, match="does not serve model"):
        LlamaVLRerank(model=str(vl_reranker), **wrong).postprocess_nodes(nodes, QueryBundle(query))


def test_the_command_indexes_and_asks_pages_through_the_servers(
    capsys: pytest.CaptureFixture[str], servers: dict[str, str], pages_folder: Path, vl_embedding: Path,
    vl_reranker: Path, tmp_path: Path, fake_openai: FakeOpenAI,
) -> None:  # fmt: skip
    """`qwen3-rag --pages` with --embedding-url / --reranker-url: the same sources and scores as in process."""
    from qwen3_retrieval.cli import main

    def run(*argv: str) -> str:
        status = main(list(argv))
        out, err = capsys.readouterr()
        assert status == 0, err
        return out

    engines = {
        "local": ["--device", "cpu"],
        "served": ["--embedding-url", servers["embed"]],
    }
    answers = {}
    for name, engine in engines.items():
        uri = ["--uri", str(tmp_path / f"{name}.db"), "--pages", "--embedding-model", str(vl_embedding), *engine]
        run("index", str(pages_folder), *uri)
        reranker = ["--reranker-url", servers["classify"]] if name == "served" else []
        ask = ["ask", "What is the invoice total?", *uri, "--reranker-model", str(vl_reranker), *reranker]
        answers[name] = json.loads(run(*ask, "--mode", "dense", "--candidates", "20", "--top-n", "20", "--json"))
    served, local = answers["served"]["sources"], answers["local"]["sources"]
    assert len(local) == 8 and sum(1 for s in local if s.get("image")) == 5  # 3 text passages, 5 page images
    assert [(s["source"], s.get("image")) for s in served] == [(s["source"], s.get("image")) for s in local]
    assert [s["score"] for s in served] == pytest.approx([s["score"] for s in local], abs=TOL)
    assert answers["served"]["answer"] == fake_openai.answer  # asked through the loopback chat model
    # The servers are the ones asked: a name they do not serve is their 404, one line, exit 1.
    model = ["--pages", "--embedding-model", str(vl_embedding)]
    wrong = ["--embedding-url", servers["embed"], "--embedding-served-name", "not-served"]
    assert main(["index", str(pages_folder), "--uri", str(tmp_path / "wrong.db"), *model, *wrong]) == 1
    assert "does not serve model" in capsys.readouterr().err
    served_uri = ["--uri", str(tmp_path / "served.db"), *model]
    ask = ["ask", "invoice", *served_uri, "--embedding-url", servers["embed"], "--reranker-model", str(vl_reranker)]
    assert main([*ask, "--reranker-url", servers["classify"], "--reranker-served-name", "not-served", "--no-llm"]) == 1
    assert "does not serve model" in capsys.readouterr().err
