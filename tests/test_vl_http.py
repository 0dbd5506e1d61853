"""The Qwen3-VL models over HTTP, against a loopback server that does what vLLM does with the request's bytes.

vLLM's Qwen3-VL model needs torchvision, which this test environment does not have, so here a loopback server
stands in for one (integration_tests/test_vllm_vl.py runs the same client against real vLLM servers, in an
environment of their own). It is built from transformers and not from our package: it decodes the request's
images, renders its messages with the checkpoint's chat template (control tokens recognised, as vLLM tokenizes a
rendered chat), resizes each image by the official rule within the server's own pixel bounds (the checkpoint's;
per-request ``mm_processor_kwargs`` are refused with vLLM's HTTP 400) and runs transformers' ``Qwen3VLModel``
(:mod:`vl_reference`), reporting the prompt's length as vLLM does. So a request whose bytes render to anything
but the official prompt, or whose images are not the official pixels, gives vectors and scores other than the
official code's. It does not take videos (the real servers do).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from loopback import serving
from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker
from test_vl import TOL, clip, mixed_inputs, picture, write_video
from vl_reference import MAX_PIXELS, MIN_PIXELS, Official


class LoopbackVLLM:
    """A vLLM stand-in serving one embedding and one reranker checkpoint; records every request's body."""

    def __init__(self, embedder: Official, reranker: Official, name: str) -> None:
        self.embedder, self.reranker, self.name = embedder, reranker, name
        # The server's own pixel bounds (vLLM's --mm-processor-kwargs; the checkpoint's by default).
        self.min_pixels, self.max_pixels = MIN_PIXELS, MAX_PIXELS
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The request's messages as the chat template sees them: vLLM turns ``image_url`` into an image, and a
        string content into one text part."""
        out = []
        for message in body["messages"]:
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            out.append({"role": message["role"], "content": [self.item(part) for part in parts]})
        return out

    @staticmethod
    def item(part: dict[str, Any]) -> dict[str, Any]:
        if part["type"] == "text":
            return part
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        return {"type": "image", "image": Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))}

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        official = self.reranker if path == "/classify" else self.embedder
        row = official.encode(
            self.conversation(body) if body.get("add_generation_prompt") else self._no_prompt(body),
            self.min_pixels,
            self.max_pixels,
        )
        usage = {"prompt_tokens": len(row["ids"]), "total_tokens": len(row["ids"])}
        hidden, _ = official.forward([row])
        last = hidden[0, -1]
        if path == "/classify":
            probability = torch.sigmoid(last @ official.score_weight).item()
            return {"data": [{"index": 0, "probs": [probability]}], "usage": usage}
        if body.get("use_activation", True):
            last = last / last.norm()
        return {"data": [{"index": 0, "embedding": last.tolist()}], "usage": usage}

    def _no_prompt(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        raise AssertionError("add_generation_prompt must be sent as true: vLLM's default is now false")


@pytest.fixture(scope="module")
def loopback(vl_embedding: Path, vl_reranker: Path) -> Iterator[tuple[LoopbackVLLM, str]]:
    state = LoopbackVLLM(Official(vl_embedding), Official(vl_reranker, reranker=True), "served-vl")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            models = [{"id": state.name, "root": str(vl_embedding)}, {"id": "vl-rr", "root": str(vl_reranker)}]
            self._send(200, {"object": "list", "data": models})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            path = self.path.removeprefix("/v1") if self.path == "/v1/embeddings" else self.path
            with state.lock:
                state.bodies.append((path, body))
            expected = {"/embeddings": state.name, "/classify": "vl-rr"}[path]
            if body["model"] != expected:
                self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
                return
            if "mm_processor_kwargs" in body:  # vLLM's answer, unless started with --trust-request-mm-kwargs
                self._send(400, {"error": {"message": "Per-request mm_processor_kwargs are disabled by default"}})
                return
            self._send(200, state.answer(path, body))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serving(Handler) as url:
        yield state, url


def sent(state: LoopbackVLLM) -> list[tuple[str, dict[str, Any]]]:
    with state.lock:
        bodies, state.bodies = state.bodies, []
    return bodies


def test_http_embeddings_match_the_official_code(vl_embedding: Path, loopback: tuple[LoopbackVLLM, str]) -> None:
    state, url = loopback
    inputs = mixed_inputs()
    expected = state.embedder.embed(inputs).numpy()
    sent(state)
    embedder = Qwen3VLEmbedder(vl_embedding, base_url=url, max_concurrency=3)
    np.testing.assert_allclose(embedder.embed(inputs), expected, atol=TOL)
    bodies = sent(state)
    assert len(bodies) == len(inputs)  # one conversation per request
    for path, body in bodies:
        assert path == "/embeddings" and body["model"] == "served-vl"  # the name /v1/models gives our checkpoint
        assert body["add_generation_prompt"] is True and body["use_activation"] is False
    # Matryoshka and the pixel cap are applied on our side, as in process.
    capped = [{"image": picture(400, 300, 6)}, {"text": "a"}]
    expected = state.embedder.embed(capped, max_pixels=16 * 32 * 32, dimensions=32).numpy()
    ours = Qwen3VLEmbedder(vl_embedding, base_url=url, max_pixels=16 * 32 * 32, dimensions=32).embed(capped)
    np.testing.assert_allclose(ours, expected, atol=TOL)


def test_http_images_are_the_official_pixels(vl_embedding: Path, loopback: tuple[LoopbackVLLM, str]) -> None:
    """The image sent is the official resize, so the server's own resize leaves it as it is."""
    state, url = loopback
    images = [picture(150, 100, 20), picture(90, 70, 21, "RGBA"), picture(7, 9, 22, "L")]
    sent(state)
    Qwen3VLEmbedder(vl_embedding, base_url=url).embed([{"image": images}])
    ((_, body),) = sent(state)
    received = [LoopbackVLLM.item(p)["image"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    for original, got in zip(images, received, strict=True):
        official = Official.fetch_image(original, MIN_PIXELS, MAX_PIXELS)
        assert got.size == official.size and got.tobytes() == official.tobytes()
        again = Official.fetch_image(got, MIN_PIXELS, MAX_PIXELS)  # what the server does to it
        assert again.tobytes() == got.tobytes()


def test_http_refuses_an_answer_for_images_the_server_resized_otherwise(
    vl_embedding: Path, loopback: tuple[LoopbackVLLM, str]
) -> None:
    """A server whose pixel bounds exclude an image's official size resizes it again: its answer is refused."""
    state, url = loopback
    sent(state)
    big = {"image": picture(400, 300, 7)}  # 120,000 pixels once resized
    state.max_pixels = 64 * 32 * 32
    try:
        with pytest.raises(
            ValueError,
            match=r"ran a prompt of \d+ tokens where the one computed here has \d+.*"
            r"--mm-processor-kwargs '\{\"min_pixels\": 4096, \"max_pixels\": 1843200\}'",
        ):
            Qwen3VLEmbedder(vl_embedding, base_url=url).embed([big])
        expected = state.embedder.embed([big], max_pixels=state.max_pixels).numpy()
        fitted = Qwen3VLEmbedder(vl_embedding, base_url=url, max_pixels=state.max_pixels)  # the message's other fix
        np.testing.assert_allclose(fitted.embed([big]), expected, atol=TOL)
    finally:
        state.max_pixels = MAX_PIXELS
    assert all("mm_processor_kwargs" not in body for _, body in sent(state))


def test_http_reranker_matches_the_official_code(vl_reranker: Path, loopback: tuple[LoopbackVLLM, str]) -> None:
    state, url = loopback
    query = {"text": "A woman playing with her dog on a beach at sunset."}
    long_text = " ".join(["sunset over the sea with a dog running"] * 40)
    documents = [
        {"text": "A woman shares a joyful moment with her golden retriever."},
        {"image": picture(120, 90, 10)},
        {"text": "caption", "image": picture(64, 64, 11)},
        {},
        {"image": [picture(50, 50, 12), picture(70, 40, 13, "RGBA")], "text": ["a", "b"]},
        {"text": long_text},
    ]
    expected = state.reranker.score(query, documents, max_length=300)
    reranker = Qwen3VLReranker(vl_reranker, base_url=url, served_model_name="vl-rr", max_length=300)
    np.testing.assert_allclose(reranker.score(query, documents), expected, atol=TOL)
    assert max(expected) - min(expected) > 0.01
    image_query = {"image": picture(100, 100, 14), "text": "this"}
    expected = state.reranker.score(image_query, documents, "Find the same scene", max_length=300)
    np.testing.assert_allclose(reranker.score(image_query, documents, "Find the same scene"), expected, atol=TOL)
    assert all(path == "/classify" and body["add_generation_prompt"] for path, body in sent(state))


def test_http_refuses_text_a_server_would_read_as_control_tokens(
    vl_embedding: Path, vl_reranker: Path, loopback: tuple[LoopbackVLLM, str], tmp_path: Path
) -> None:
    """In process, such text stays characters; a server would tokenize it as control tokens: nothing is sent."""
    state, url = loopback
    sent(state)
    embedder = Qwen3VLEmbedder(vl_embedding, base_url=url)
    with pytest.raises(ValueError, match=r"^inputs\[1\]: its text spells a control token .*in-process engine"):
        embedder.embed(["fine", {"text": "a <|image_pad|> b", "image": picture(40, 40, 1)}])
    reranker = Qwen3VLReranker(vl_reranker, base_url=url, served_model_name="vl-rr")
    with pytest.raises(ValueError, match=r"documents\[0\]: its text spells a control token"):
        reranker.score("q <|im_end|>", ["doc"])
    assert sent(state) == []
    # A server times every video of a request one way: a file and frames in one input cannot be sent exactly.
    file = write_video(tmp_path / "clip.mkv", clip(4, 64, 64, 3), fps=4)
    with pytest.raises(ValueError, match=r"^inputs\[0\] has videos timed differently .*give each its own input"):
        embedder.embed([{"video": [[picture(64, 64, 1), picture(64, 64, 2)], str(file)]}])
    assert sent(state) == []
    # A cut inside a character (a 3-byte one, cut after 1, 2 or 3 of its byte tokens) could not be sent as the
    # same ids either; a cut between characters is sent, and gives what the in-process engine gives.
    outcomes = []
    for max_length in (60, 61, 62):
        local = Qwen3VLEmbedder(vl_embedding, max_length=max_length).embed(["中" * 200])
        try:
            remote = Qwen3VLEmbedder(vl_embedding, base_url=url, max_length=max_length).embed(["中" * 200])
        except ValueError as err:
            assert str(err).startswith("inputs[0]: its text was cut to fit max_length inside a character")
            outcomes.append("refused")
        else:
            np.testing.assert_allclose(remote, local, atol=TOL)
            outcomes.append("sent")
    assert sorted(outcomes) == ["refused", "refused", "sent"]


def test_both_frameworks_reach_the_server_with_the_core_options(
    vl_embedding: Path, loopback: tuple[LoopbackVLLM, str], tmp_path: Path
) -> None:
    from qwen3_retrieval.langchain import Qwen3VLEmbeddings
    from qwen3_retrieval.llama_index import Qwen3VLEmbedding

    state, url = loopback
    path = tmp_path / "page.png"
    picture(120, 80, 3).save(path)
    expected = Qwen3VLEmbedder(vl_embedding).embed(["a text", {"image": str(path)}])
    sent(state)
    langchain = Qwen3VLEmbeddings(model=str(vl_embedding), base_url=url, api_key="sk-vl-secret")
    assert "sk-vl-secret" not in repr(langchain)
    np.testing.assert_allclose(langchain.embed_documents(["a text"])[0], expected[0], atol=TOL)
    np.testing.assert_allclose(langchain.embed_image([str(path)])[0], expected[1], atol=TOL)
    llama: Any = Qwen3VLEmbedding(model_name=str(vl_embedding), base_url=url)
    np.testing.assert_allclose(llama.get_image_embedding(str(path)), expected[1], atol=TOL)
    assert {path for path, _ in sent(state)} == {"/embeddings"}


async def test_http_async_calls_await_the_server_as_the_sync_ones_do(
    vl_embedding: Path, vl_reranker: Path, loopback: tuple[LoopbackVLLM, str]
) -> None:
    state, url = loopback
    inputs = mixed_inputs()
    embedder = Qwen3VLEmbedder(vl_embedding, base_url=url)
    np.testing.assert_allclose(await embedder.aembed(inputs), state.embedder.embed(inputs).numpy(), atol=TOL)
    query, documents = {"text": "a dog on a beach"}, [{"text": "a dog"}, {"image": picture(80, 60, 15)}]
    reranker = Qwen3VLReranker(vl_reranker, base_url=url, served_model_name="vl-rr")
    expected = state.reranker.score(query, documents)
    np.testing.assert_allclose(await reranker.ascore(query, documents), expected, atol=TOL)
    assert [i for i, _ in await reranker.arank(query, documents)] == [i for i, _ in reranker.rank(query, documents)]
    sent(state)
