"""`qwen3_retrieval.__version__` is the package's version, and `qwen3-rag --version` prints it."""

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import qwen3_retrieval
from qwen3_retrieval.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_installed_distributions():
    assert re.fullmatch(r"\d+\.\d+\.\d+", qwen3_retrieval.__version__)
    assert version("qwen3-retrieval") == qwen3_retrieval.__version__


def test_pyproject_reads_the_version_from_the_package():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'path = "src/qwen3_retrieval/__init__.py"' in pyproject


def test_qwen3_rag_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"qwen3-rag {qwen3_retrieval.__version__}\n"


def test_qwen3_rag_version_in_a_process():
    done = subprocess.run(
        [sys.executable, "-m", "qwen3_retrieval.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout == f"qwen3-rag {qwen3_retrieval.__version__}\n"
