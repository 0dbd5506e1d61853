"""`qwen3-rag` on real folders: formats, token-sized passages, hybrid retrieval, a faithful mirror, streaming.

Real Milvus Lite, real files written here (PDF with reportlab, DOCX with python-docx), the loopback chat server.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FakeOpenAI
from qwen3_retrieval.cli import main
from qwen3_retrieval.rag.pipeline import RagConfig, index, retrieve
from qwen3_retrieval.rag.store import PassageStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def stored(uri: Path) -> list[dict[str, str]]:
    store = PassageStore(str(uri), "qwen3_rag")
    assert store.exists()
    fields = ["path", "text", "heading", "location", "root"]
    return store.client.query("qwen3_rag", filter="", output_fields=fields, limit=16384)


def write_pdf(path: Path, pages: list[list[str]]) -> None:
    """A real PDF: one page per list of lines; an empty list is a page with no text layer (like a scan)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    for lines in pages:
        if not lines:
            pdf.rect(100, 100, 300, 300, fill=1)  # ink, but no text
        for n, line in enumerate(lines):
            pdf.drawString(72, 760 - 16 * n, line)
        pdf.showPage()
    pdf.save()


def write_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Deployment guide", level=1)
    document.add_paragraph("Replicas are spread across three availability zones.")
    document.add_heading("Backups", level=2)
    document.add_paragraph("Snapshots are taken every night at two o'clock.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "port", "19530"
    table.cell(1, 0).text, table.cell(1, 1).text = "metrics", "9091"
    document.save(str(path))


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "intro.md").write_text("# Intro\n\nThe service stores vectors.\n")
    write_pdf(folder / "docs" / "manual.pdf", [["Chapter one explains shards."], [], ["Chapter two covers replicas."]])
    (folder / "docs" / "page.html").write_text(
        "<html><head><style>p {color: red}</style><script>var secret = 1;</script></head><body>"
        "<nav>Home | About</nav><h2>Query language</h2><p>Filters use boolean expressions.</p></body></html>"
    )
    write_docx(folder / "docs" / "guide.docx")
    (folder / "docs" / "broken.pdf").write_bytes(b"%PDF-1.7 this is not really a PDF")
    for hidden in (".git/notes.md", ".venv/lib/readme.md", "node_modules/pkg/README.md", "env2/lib/x.md"):
        (folder / hidden).parent.mkdir(parents=True, exist_ok=True)
        (folder / hidden).write_text("# Not documentation\n\nInstalled or hidden.\n")
    (folder / "env2" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a virtualenv under another name
    return folder


def test_formats_are_read_with_their_structure_and_junk_folders_skipped(
    tmp_path: Path, mixed_folder: Path, models: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    uri = tmp_path / "rag.db"
    status, out, err = run(capsys, "index", str(mixed_folder), "--uri", str(uri), *models)
    assert status == 0, err
    assert "from 4 files" in out
    # The scanned page and the broken file are warnings; the run goes on.
    assert "manual.pdf: no text on page(s) 2" in err and "skipped" in err and "broken.pdf" in err
    rows = stored(uri)
    assert {r["path"] for r in rows} == {"docs/intro.md", "docs/manual.pdf", "docs/page.html", "docs/guide.docx"}
    by_path: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    pdf = sorted(by_path["docs/manual.pdf"], key=lambda r: r["location"])
    assert [r["location"] for r in pdf] == ["page 1", "page 3"]
    assert "shards" in pdf[0]["text"] and "replicas" in pdf[1]["text"]
    (html,) = by_path["docs/page.html"]
    assert html["heading"] == "Query language" and html["text"].startswith("Query language\n\n")
    assert "secret" not in html["text"] and "Filters use boolean expressions." in html["text"]
    docx_rows = by_path["docs/guide.docx"]
    assert {r["heading"] for r in docx_rows} == {"Deployment guide", "Deployment guide > Backups"}
    assert any("port | 19530" in r["text"] for r in docx_rows)
    # --include-hidden reads the skipped folders too.
    status, out, _ = run(capsys, "index", str(mixed_folder), "--uri", str(uri), *models, "--include-hidden")
    assert status == 0 and "from 4 files" in out
    assert {r["path"] for r in stored(uri)} >= {".git/notes.md", ".venv/lib/readme.md", "node_modules/pkg/README.md"}


def test_passages_are_sized_in_the_embedding_models_tokens(
    tmp_path: Path, models: list[str], checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    rng = random.Random(3)
    words = [rng.choice(["alpha", "vector", "shard", "index", "replica", "query", "segment"]) for _ in range(1500)]
    paragraphs = [" ".join(words[i : i + 60]) for i in range(0, len(words), 60)]
    folder = tmp_path / "long"
    folder.mkdir()
    (folder / "long.md").write_text("# Storage\n\n## Segments\n\n" + "\n\n".join(paragraphs) + "\n")
    uri = tmp_path / "rag.db"
    status, _, err = run(capsys, "index", str(folder), "--uri", str(uri), *models, "--chunk-tokens", "64")
    assert status == 0, err
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["embedding"])
    rows = stored(uri)
    assert len(rows) > 10
    for row in rows:
        assert row["text"].startswith("Storage > Segments\n\n")
        assert len(tokenizer.tokenize(row["text"])) <= 64
    kept = " ".join(row["text"] for row in rows)
    assert all(word in kept for word in set(words))
    # The collection records its splitting: another one is refused, naming both.
    status, _, err = run(capsys, "index", str(folder), "--uri", str(uri), *models, "--chunk-tokens", "128")
    assert status == 1 and "--chunk-tokens 64" in err and "--recreate" in err


def test_an_exact_identifier_is_found_through_bm25(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    rng = random.Random(5)
    vocabulary = ["cluster", "node", "memory", "disk", "network", "latency", "request", "client", "server", "log"]
    folder = tmp_path / "kb"
    folder.mkdir()
    for n in range(24):
        body = " ".join(rng.choice(vocabulary) for _ in range(40))
        (folder / f"note{n:02d}.md").write_text(f"# Note {n}\n\n{body}\n")
    (folder / "errors.md").write_text("# Error codes\n\nERR_QX_4471 means the shard lease expired before commit.\n")
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu")
    assert index([folder], where).files_indexed == 25
    # Random-weight models: the dense vectors and the reranker know nothing; BM25 knows the identifier.
    sources = retrieve(
        "What does ERR_QX_4471 mean?",
        where,
        reranker_model=str(checkpoints["reranker"]),
        candidates=5,
        top_n=5,
        mode="hybrid",
    )
    assert any("ERR_QX_4471" in s.text for s in sources)
    assert all(s.path.endswith(".md") for s in sources)


def test_the_index_mirrors_deletes_renames_and_moves(
    tmp_path: Path, models: list[str], reranker_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for name, text in {"a.md": "Alpha passage.", "b.md": "Beta passage.", "sub/c.md": "Gamma passage."}.items():
        (folder / name).write_text(f"# {name}\n\n{text}\n")
    uri = str(tmp_path / "rag.db")
    assert run(capsys, "index", str(folder), "--uri", uri, *models)[0] == 0
    assert len(stored(Path(uri))) == 3
    (folder / "b.md").unlink()
    status, out, _ = run(capsys, "index", str(folder), "--uri", uri, *models)
    assert status == 0 and "(2 unchanged, 1 removed)" in out
    assert {r["path"] for r in stored(Path(uri))} == {"a.md", "sub/c.md"}
    (folder / "sub" / "c.md").rename(folder / "sub" / "renamed.md")
    status, out, _ = run(capsys, "index", str(folder), "--uri", uri, *models)
    assert "from 1 files (1 unchanged, 1 removed, 1 passages reused)" in out  # its vectors, not embedded again
    assert {r["path"] for r in stored(Path(uri))} == {"a.md", "sub/renamed.md"}
    # Move and rename the whole folder: the same root, nothing duplicated, nothing embedded again.
    moved = tmp_path / "elsewhere" / "manuals"
    moved.parent.mkdir()
    shutil.move(str(folder), str(moved))
    status, out, _ = run(capsys, "index", str(moved), "--uri", uri, *models)
    assert status == 0 and "Indexed 0 passages from 0 files (2 unchanged, 0 removed)" in out
    rows = stored(Path(uri))
    assert len(rows) == 2 and len({r["root"] for r in rows}) == 1
    # Sources are shown where the files are now.
    status, out, _ = run(capsys, "ask", "alpha", "--uri", uri, *models, *reranker_args, "--json", "--no-llm")
    assert status == 0
    assert {s["source"] for s in json.loads(out)["sources"]} == {
        str(moved / "a.md"),
        str(moved / "sub" / "renamed.md"),
    }
    # A second, different folder is a second root beside the first.
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.md").write_text("# other\n\nAnother alpha.\n")
    run(capsys, "index", str(other), "--uri", uri, *models)
    assert len(stored(Path(uri))) == 3


def test_another_embedding_model_is_refused_until_recreate(
    tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "rag.db")
    first, second = str(checkpoints["embedding"]), str(checkpoints["embedding-no-eos"])
    assert run(capsys, "index", str(docs_folder), "--uri", uri, "--embedding-model", first)[0] == 0
    before = len(stored(Path(uri)))
    for command in (["index", str(docs_folder)], ["ask", "capital", "--no-llm"]):
        status, _, err = run(capsys, *command, "--uri", uri, "--embedding-model", second)
        assert status == 1 and first in err and second in err and err.count("\n") == 1
    assert len(stored(Path(uri))) == before  # nothing stored was lost
    status, _, _ = run(capsys, "index", str(docs_folder), "--uri", uri, "--embedding-model", second, "--recreate")
    assert status == 0 and len(stored(Path(uri))) == before


def test_the_answer_streams_then_the_sources_follow(
    tmp_path: Path,
    docs_folder: Path,
    models: list[str],
    reranker_args: list[str],
    fake_openai: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = str(tmp_path / "rag.db")
    run(capsys, "index", str(docs_folder), "--uri", uri, *models)
    status, out, err = run(capsys, "ask", "What is Milvus?", "--uri", uri, *models, *reranker_args)
    assert status == 0, err
    assert out.startswith(f"Answer:\n{fake_openai.answer}\n")
    assert out.index(fake_openai.answer) < out.index("Sources (reranked, best first):")
    assert fake_openai.requests[-1]["body"]["stream"] is True
    # The stream breaks off halfway: what arrived stays printed, the sources follow, one error line ends it.
    fake_openai.mode = "break"
    status, out, err = run(capsys, "ask", "What is Milvus?", "--uri", uri, *models, *reranker_args)
    assert status == 1
    assert out.startswith("Answer:\nMilvus is ") and fake_openai.answer not in out
    assert "Sources (reranked, best first):" in out
    assert err.count("\n") == 1 and "broke off" in err
    status, out, err = run(capsys, "ask", "What is Milvus?", "--uri", uri, *models, *reranker_args, "--json")
    payload = json.loads(out)  # still one JSON object
    assert status == 1 and payload["answer"] == "Milvus is " and "broke off" in payload["error"]


BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # not installed\n"


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [
        (["pymilvus"], "needs the 'rag' extra: pip install 'qwen3-retrieval[rag]'"),
        (["langchain_text_splitters"], "needs the 'rag' extra"),
        (["pypdf"], "reading broken.pdf needs the 'pdf' extra: pip install 'qwen3-retrieval[pdf]'"),
        (["docx"], "needs the 'docx' extra"),
        (["markdownify"], "needs the 'html' extra"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, mixed_folder: Path, checkpoints: dict[str, Path], blocked: list[str], expected: str
) -> None:
    code = BLOCK.format(names=blocked) + "from qwen3_retrieval.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = ["index", str(mixed_folder), "--uri", str(tmp_path / "rag.db"), "--embedding-model"]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv, str(checkpoints["embedding"]), "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("qwen3-rag: error: ")


def test_ask_without_the_openai_package_is_one_line(
    tmp_path: Path, docs_folder: Path, models: list[str], reranker_args: list[str], fake_openai: FakeOpenAI
) -> None:
    uri = str(tmp_path / "rag.db")
    assert main(["index", str(docs_folder), "--uri", uri, *models]) == 0
    code = BLOCK.format(names=["openai"]) + "from qwen3_retrieval.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    done = subprocess.run(
        [sys.executable, "-c", code, "ask", "What is Milvus?", "--uri", uri, *models, *reranker_args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    expected = "qwen3-rag: error: the chat model needs the 'rag' extra: pip install 'qwen3-retrieval[rag]' (or [all])"
    assert done.stderr.strip() == expected
    assert "Sources (reranked, best first):" in done.stdout


def test_a_markdown_heading_named_page_is_not_a_page(
    tmp_path: Path, models: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("# Page 2\n\nA heading that only looks like a PDF page.\n")
    write_pdf(folder / "real.pdf", [["A real page of a PDF."]])
    uri = tmp_path / "rag.db"
    assert run(capsys, "index", str(folder), "--uri", str(uri), *models)[0] == 0
    # Before, any top heading starting "Page " was cited as a page; now only the PDF reader's pages are.
    assert {(r["path"], r["heading"], r["location"]) for r in stored(uri)} == {
        ("notes.md", "Page 2", ""),
        ("real.pdf", "Page 1", "page 1"),
    }
