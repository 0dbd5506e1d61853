"""Run the README's Python snippets and the examples' imports as a new user would, after `pip install ".[all]"`.

CI runs this in a fresh virtual environment holding only the package and the extras the README names (no test
extra), so an import that only the test extra provides fails here. The snippets are read from README.md itself
(never copied); only the hub ids are swapped for small local checkpoints, since CI has no model hub.

    python .ci/readme_snippets.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## LangChain", "## LlamaIndex")


def snippets(readme: str) -> dict[str, str]:
    """Return the first ```python block of each README section named in SECTIONS."""
    found: dict[str, str] = {}
    for section in SECTIONS:
        start = readme.index(f"\n{section}\n")
        end = readme.find("\n## ", start + 1)
        block = re.search(r"```python\n(.*?)```", readme[start : end if end != -1 else None], re.S)
        if block is None:
            raise SystemExit(f"README section {section!r} has no python snippet")
        found[section] = block.group(1)
    return found


def main() -> None:
    """Build small checkpoints, then run each snippet and each example's --help."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from qwen3_retrieval.testing import make_embedding_checkpoint, make_reranker_checkpoint

    work = Path(tempfile.mkdtemp(prefix="readme-"))
    hub_ids = {
        "Qwen/Qwen3-Embedding-0.6B": str(make_embedding_checkpoint(work / "embedding")),
        "Qwen/Qwen3-Reranker-0.6B": str(make_reranker_checkpoint(work / "reranker")),
    }
    os.chdir(work)  # the snippets write their Milvus Lite files next to them
    for section, code in snippets((ROOT / "README.md").read_text()).items():
        for hub_id, folder in hub_ids.items():
            code = code.replace(hub_id, folder)
        print(f"--- {section}", flush=True)
        exec(compile(code, f"README.md ({section})", "exec"), {"__name__": "__readme__"})
    for example in sorted((ROOT / "examples").glob("[!_]*.py")):
        print(f"--- {example.name} --help", flush=True)
        subprocess.run([sys.executable, str(example), "--help"], check=True, stdout=subprocess.DEVNULL)
    rag_on_every_format(work, hub_ids)
    print("README snippets, examples and qwen3-rag on every format ran with the [all] extras only")


def rag_on_every_format(work: Path, hub_ids: dict[str, str]) -> None:
    """`qwen3-rag index` + `ask` over Markdown, HTML, DOCX and PDF files: every format's extra is in [all]."""
    import docx  # python-docx, from [docx]
    from pypdf import PdfWriter  # from [pdf]: a PDF without a text layer, which must be a warning

    folder = work / "docs"
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
    done = subprocess.run([command, "index", str(folder), *models], capture_output=True, text=True)
    if done.returncode != 0 or "from 3 files" not in done.stdout or "d.pdf: no text on page(s) 1" not in done.stderr:
        raise SystemExit(f"qwen3-rag index failed:\n{done.stdout}\n{done.stderr}")
    ask = [command, "ask", "capital", *models, "--reranker-model", hub_ids["Qwen/Qwen3-Reranker-0.6B"]]
    subprocess.run([*ask, "--no-llm"], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
