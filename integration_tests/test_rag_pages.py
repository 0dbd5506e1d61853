"""`qwen3-rag --pages`: PDF pages and image files indexed as images with the Qwen3-VL models, beside text.

Real Milvus Lite, PDFs written here with reportlab (one of them a scan: an image with no text layer), images
written with PIL, the tiny random-weight VL checkpoints, and the loopback chat server. No binary fixtures.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import FakeOpenAI
from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3_retrieval.cli import main
from qwen3_retrieval.rag.pages import RENDER_PIXELS, page_image
from qwen3_retrieval.rag.store import PassageStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def drawing(text: str, size: tuple[int, int] = (600, 800)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((40, 40), text, fill="black")
    ImageDraw.Draw(image).rectangle((40, 100, 400, 300), outline="black", width=5)
    return image


@pytest.fixture
def pages_folder(tmp_path: Path) -> Path:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    folder = tmp_path / "scans"
    folder.mkdir()
    pdf = canvas.Canvas(str(folder / "report.pdf"), pagesize=A4)
    for line in ("Revenue grew by ten percent this quarter.", "Costs fell in every region."):
        pdf.drawString(72, 760, line)
        pdf.showPage()
    pdf.save()
    scan = canvas.Canvas(str(folder / "scan.pdf"), pagesize=A4)  # a scanned page: pixels, no text layer
    scan.drawImage(ImageReader(drawing("Invoice total: 1,250 EUR")), 0, 0, *A4)
    scan.showPage()
    scan.save()
    drawing("A slide about vector search").save(folder / "slide.png")
    drawing("A screenshot", (900, 500)).save(folder / "screenshot.jpg")
    (folder / "notes.md").write_text("# Notes\n\nMilvus is a vector database.\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture
def vl_args(vl_embedding: Path, vl_reranker: Path) -> list[str]:
    return ["--pages", "--embedding-model", str(vl_embedding), "--device", "cpu"]


def rows(uri: Path) -> list[dict]:
    store = PassageStore(str(uri), "qwen3_rag")
    try:
        assert store.exists() and store.pages
        fields = ["path", "text", "location", "image", "vector"]
        return store.client.query("qwen3_rag", filter="", output_fields=fields, limit=1000)
    finally:
        store.close()


def test_index_takes_pages_and_images_beside_text(
    capsys: pytest.CaptureFixture[str], pages_folder: Path, vl_args: list[str], vl_embedding: Path, tmp_path: Path
) -> None:
    uri = tmp_path / "pages.db"
    status, out, err = run(capsys, "index", str(pages_folder), "--uri", str(uri), *vl_args)
    assert status == 0, err
    assert "from 5 files" in out  # the broken image is skipped with a warning
    assert "broken.png" in err and "no text on page" not in err  # the scan is not lost: it is an image
    found = {(r["path"], r["image"]) for r in rows(uri)}
    assert {("report.pdf", "page 1"), ("report.pdf", "page 2"), ("scan.pdf", "page 1")} <= found
    assert {("slide.png", "file"), ("screenshot.jpg", "file"), ("notes.md", ""), ("report.pdf", "")} <= found
    scan = next(r for r in rows(uri) if r["path"] == "scan.pdf")
    assert scan["text"] == ""  # no text layer: only its image finds it
    # Each image row holds the VL model's vector of the image the renderer makes from its file.
    embedder = Qwen3VLEmbedder(vl_embedding, device="cpu")
    for row in rows(uri):
        if row["image"]:
            expected = embedder.embed_documents([{"image": page_image(pages_folder / row["path"], row["image"])}])
            np.testing.assert_allclose(row["vector"], expected[0], atol=1e-5)
    status, out, _ = run(capsys, "index", str(pages_folder), "--uri", str(uri), *vl_args)
    assert status == 0 and "from 0 files (5 unchanged" in out  # running it again changes nothing


def test_pages_render_at_the_models_largest_image(pages_folder: Path) -> None:
    first = Image.open(io.BytesIO(page_image(pages_folder / "report.pdf", "page 1")))
    second = Image.open(io.BytesIO(page_image(pages_folder / "report.pdf", "page 2")))
    assert first.size == second.size and 0.99 * RENDER_PIXELS <= first.width * first.height <= 1.01 * RENDER_PIXELS
    assert abs(first.width / first.height - 595.28 / 841.89) < 0.01  # A4, not stretched
    assert np.asarray(first).tobytes() != np.asarray(second).tobytes()  # each page its own
    with pytest.raises(ValueError, match="page 3"):
        page_image(pages_folder / "report.pdf", "page 3")


def test_ask_reranks_page_images_with_the_vl_reranker(
    capsys: pytest.CaptureFixture[str], pages_folder: Path, vl_args: list[str], vl_reranker: Path, tmp_path: Path
) -> None:
    uri = tmp_path / "pages.db"
    assert run(capsys, "index", str(pages_folder), "--uri", str(uri), *vl_args)[0] == 0
    question = "What is the invoice total?"
    ask = ["ask", question, "--uri", str(uri), *vl_args, "--reranker-model", str(vl_reranker), "--no-llm", "--json"]
    status, out, err = run(capsys, *ask, "--mode", "dense", "--candidates", "20", "--top-n", "20")
    assert status == 0, err
    sources = json.loads(out)["sources"]
    assert len(sources) == 8  # every passage (3 text, 5 images): the scan is searchable
    inputs = [
        {"image": page_image(pages_folder / Path(s["source"]).name, s["image"])} if "image" in s else s["text"]
        for s in sources
    ]
    expected = Qwen3VLReranker(vl_reranker, device="cpu").score(question, inputs)
    assert [s["score"] for s in sources] == pytest.approx(expected, abs=1e-5)
    assert [s["score"] for s in sources] == sorted(expected, reverse=True)
    assert {"scan.pdf"} <= {Path(s["source"]).name for s in sources if s.get("image")}


def test_ask_sends_page_images_to_the_chat_model(
    capsys: pytest.CaptureFixture[str],
    pages_folder: Path,
    vl_args: list[str],
    vl_reranker: Path,
    tmp_path: Path,
    fake_openai: FakeOpenAI,
) -> None:
    uri = tmp_path / "pages.db"
    assert run(capsys, "index", str(pages_folder), "--uri", str(uri), *vl_args)[0] == 0
    ask = ["ask", "invoice", "--uri", str(uri), *vl_args, "--reranker-model", str(vl_reranker), "--top-n", "9"]
    status, out, err = run(capsys, *ask, "--json")
    assert status == 0, err
    sources = json.loads(out)["sources"]
    content = fake_openai.requests[-1]["body"]["messages"][1]["content"]
    images = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert len(images) == sum(1 for s in sources if s.get("image")) == 5
    first = next(n for n, s in enumerate(sources, 1) if s.get("image"))
    assert f"Image of passage [{first}]:" in [part.get("text") for part in content]
    kinds = {url.split(";")[0] for url in images}
    assert kinds == {"data:image/png", "data:image/jpeg"}  # rendered pages and the slide; the screenshot
    for url in images:
        assert Image.open(io.BytesIO(base64.b64decode(url.split("base64,", 1)[1]))).width > 0
    # --no-images: the pages' extracted text, one string, for a chat model that takes no images.
    status, _, err = run(capsys, *ask, "--json", "--no-images")
    assert status == 0, err
    content = fake_openai.requests[-1]["body"]["messages"][1]["content"]
    assert isinstance(content, str) and "Revenue grew by ten percent" in content and "image_url" not in content


def test_mismatches_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], pages_folder: Path, vl_args: list[str], models: list[str], tmp_path: Path
) -> None:
    uri = tmp_path / "pages.db"
    assert run(capsys, "index", str(pages_folder), "--uri", str(uri), *vl_args)[0] == 0
    no_pages = [a for a in vl_args if a != "--pages"]
    status, _, err = run(capsys, "ask", "invoice", "--uri", str(uri), *no_pages, "--no-llm")
    assert status == 1 and "was built with --pages; add --pages" in err and len(err.strip().splitlines()) == 1
    status, _, err = run(capsys, "index", str(pages_folder / "slide.png"), "--uri", str(tmp_path / "t.db"), *models)
    assert status == 1 and "--pages indexes images" in err
    assert not (tmp_path / "t.db").exists()  # a failed run leaves nothing


async def test_the_framework_retrievers_cite_page_images(
    capsys: pytest.CaptureFixture[str], pages_folder: Path, vl_args: list[str], vl_embedding: Path,
    vl_reranker: Path, tmp_path: Path,
) -> None:  # fmt: skip
    from qwen3_retrieval.langchain import Qwen3RagRetriever as LangChainRetriever
    from qwen3_retrieval.llama_index import Qwen3RagRetriever as LlamaIndexRetriever
    from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

    uri = tmp_path / "pages.db"
    assert run(capsys, "index", str(pages_folder), "--uri", str(uri), *vl_args)[0] == 0
    config = RagConfig(uri=str(uri), embedding_model=str(vl_embedding), reranker_model=str(vl_reranker),
                       device="cpu", pages=True)  # fmt: skip
    pipeline = RagPipeline(config)
    sources = pipeline.retrieve("the invoice", candidates=20, top_n=8, mode="dense")
    documents = await LangChainRetriever(pipeline=pipeline, candidates=20, top_n=8, mode="dense").ainvoke("the invoice")
    nodes = LlamaIndexRetriever(pipeline, candidates=20, top_n=8, mode="dense").retrieve("the invoice")
    expected = [s.image for s in sources]
    assert sum(map(bool, expected)) == 5  # every page and image file, beside the 3 text passages
    assert [d.metadata.get("image", "") for d in documents] == expected
    assert [n.node.metadata.get("image", "") for n in nodes] == expected
    assert [d.metadata["relevance_score"] for d in documents] == pytest.approx([s.score for s in sources], abs=1e-5)
