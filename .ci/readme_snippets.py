"""Run the README's snippets and the examples as a new user would, after `pip install "qwen3-retrieval[all]"`.

CI runs this in a fresh virtual environment holding the built wheel and the extras the README names (no test
extra), so an import that only the test extra provides, or a file missing from the wheel, fails here. The
snippets are read from README.md itself (never copied). The "To try it" block runs first, as written: it builds
the README's own test checkpoints, which then stand in for the hub ids of the Python snippets (CI has no model
hub). Every snippet runs twice in the same folder, as a user who runs it again would: the second run meets the
collections and files the first one left. Then every ```python block of the docs pages (docs/*.md) runs the same
way, except a block marked as needing what CI lacks: an HTML comment `<!-- not run: ... -->` between it and the
block before it (the page shows a note saying so).

    python .ci/readme_snippets.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## LangChain", "## LlamaIndex", "## The core")
NOT_RUN = "<!-- not run:"
TRY_IT = "To try it with no model download"
CHECKPOINTS = {
    "Qwen/Qwen3-Embedding-0.6B": "test-models/emb",
    "Qwen/Qwen3-Reranker-0.6B": "test-models/rr",
    "Qwen/Qwen3-VL-Embedding-2B": "test-models/vl-emb",  # built below: the "To try it" block has no VL models
    "Qwen/Qwen3-VL-Reranker-2B": "test-models/vl-rr",
}


def section(readme: str, heading: str) -> str:
    """Return the README's section under ``heading``, up to the next top-level section."""
    start = readme.index(f"\n{heading}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def first_block(text: str, language: str, where: str) -> str:
    """Return the first fenced ``language`` block in ``text``."""
    block = re.search(rf"```{language}\n(.*?)```", text, re.S)
    if block is None:
        raise SystemExit(f"README: no {language} block in {where}")
    return block.group(1)


def docs_blocks(page: Path) -> list[tuple[int, str]]:
    """Return the (line, code) of each ```python block of a docs page that is not marked ``<!-- not run: ...``."""
    text = page.read_text()
    if re.search(r"^[ \t]+```python", text, re.M):
        raise SystemExit(f"{page}: an indented python block would not run; put it at the start of a line")
    blocks, previous_end = [], 0
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if block.group(1) == "python" and NOT_RUN not in text[previous_end : block.start()]:
            blocks.append((text.count("\n", 0, block.start()) + 1, block.group(2)))
        previous_end = block.end()
    return blocks


def with_test_checkpoints(code: str) -> str:
    """Return ``code`` with the hub ids replaced by the test checkpoints' folders."""
    for hub_id, folder in CHECKPOINTS.items():
        code = code.replace(hub_id, folder)
    return code


def main() -> None:
    """Run the "To try it" block, each Python snippet and each example, twice; then qwen3-rag on every format."""
    import qwen3_retrieval

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # qwen3-rag
    print(f"qwen3_retrieval from {Path(qwen3_retrieval.__file__).parent}", flush=True)
    readme = (ROOT / "README.md").read_text()
    work = Path(tempfile.mkdtemp(prefix="readme-"))
    try:
        os.chdir(work)  # the snippets write their Milvus Lite files and checkpoints next to them
        try_it = first_block(readme[readme.index(TRY_IT) :], "bash", TRY_IT)
        for run in (1, 2):
            print(f"--- README: {TRY_IT} (run {run})", flush=True)
            subprocess.run(["bash", "-euo", "pipefail", "-c", try_it], check=True)
        from qwen3_retrieval.testing import make_vl_checkpoint

        make_vl_checkpoint("test-models/vl-emb", kind="vl-embedding")
        make_vl_checkpoint("test-models/vl-rr", kind="vl-reranker")
        for heading in SECTIONS:
            code = with_test_checkpoints(first_block(section(readme, heading), "python", heading))
            for run in (1, 2):
                print(f"--- README: {heading} (run {run})", flush=True)
                exec(compile(code, f"README.md ({heading})", "exec"), {"__name__": "__readme__"})
        pages = sorted((ROOT / "docs").glob("*.md"))
        if not pages:
            raise SystemExit("no docs/*.md pages: the docs' snippets are part of this check")
        for page in pages:
            for line, code in docs_blocks(page):
                for run in (1, 2):
                    print(f"--- docs/{page.name}, line {line} (run {run})", flush=True)
                    compiled = compile(with_test_checkpoints(code), f"docs/{page.name}:{line}", "exec")
                    exec(compiled, {"__name__": "__docs__"})
        for example in sorted((ROOT / "examples").glob("[!_]*.py")):
            print(f"--- {example.name} --help", flush=True)
            subprocess.run([sys.executable, str(example), "--help"], check=True, stdout=subprocess.DEVNULL)
        rag_on_every_format(work, {hub_id: str(work / folder) for hub_id, folder in CHECKPOINTS.items()})
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)
    print("README and docs snippets (each twice), examples and qwen3-rag on every format ran with [all] only")


def rag_on_every_format(work: Path, hub_ids: dict[str, str]) -> None:
    """`qwen3-rag index` + `ask` over Markdown, HTML, DOCX and PDF files, then with --pages: every extra in [all]."""
    import docx  # python-docx, from [docx]
    from pypdf import PdfWriter  # from [pdf]: a PDF without a text layer, which must be a warning

    folder = work / "formats"
    folder.mkdir()
    (folder / "a.md").write_text("# Milvus\n\nMilvus is a vector database.\n")
    (folder / "b.html").write_text("<h1>Capitals</h1><p>Beijing is the capital of China.</p>")
    document = docx.Document()
    document.add_heading("Physics", 1)
    document.add_paragraph("Gravity attracts two bodies.")
    document.save(str(folder / "c.docx"))
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    with open(folder / "d.pdf", "wb") as pdf:
        writer.write(pdf)
    models = ["--embedding-model", hub_ids["Qwen/Qwen3-Embedding-0.6B"], "--device", "cpu"]
    command = str(Path(sys.executable).parent / "qwen3-rag")  # the console script the install put there
    print("--- qwen3-rag index / ask", flush=True)
    uri = ["--uri", str(work / "formats.db")]
    done = subprocess.run([command, "index", str(folder), *uri, *models], capture_output=True, text=True)
    if done.returncode != 0 or "from 3 files" not in done.stdout or "d.pdf: no text on page(s) 1" not in done.stderr:
        raise SystemExit(f"qwen3-rag index failed:\n{done.stdout}\n{done.stderr}")
    ask = [command, "ask", "capital", *uri, *models, "--reranker-model", hub_ids["Qwen/Qwen3-Reranker-0.6B"]]
    subprocess.run([*ask, "--no-llm"], check=True, stdout=subprocess.DEVNULL)
    # --pages, from [all] alone: the blank PDF page becomes an image passage instead of a warning.
    print("--- qwen3-rag index / ask --pages", flush=True)
    vl = ["--pages", "--embedding-model", hub_ids["Qwen/Qwen3-VL-Embedding-2B"], "--device", "cpu"]
    uri = ["--uri", str(work / "pages.db")]
    done = subprocess.run([command, "index", str(folder), *uri, *vl], capture_output=True, text=True)
    if done.returncode != 0 or "from 4 files" not in done.stdout or "no text on page" in done.stderr:
        raise SystemExit(f"qwen3-rag index --pages failed:\n{done.stdout}\n{done.stderr}")
    ask = [command, "ask", "capital", *uri, *vl, "--reranker-model", hub_ids["Qwen/Qwen3-VL-Reranker-2B"]]
    subprocess.run([*ask, "--no-llm"], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
