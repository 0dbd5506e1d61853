"""A renamed, moved or copied file takes its stored vectors instead of being embedded again, and the index it
leaves is exactly the one a clean run builds (same ids, texts and vectors)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import same_index
from qwen3_retrieval import Qwen3Embedder
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline

COLLECTION = "qwen3_rag"


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the embedder is asked for (the real method still runs)."""
    texts: list[str] = []
    original = Qwen3Embedder.embed_documents

    def recording(self: Qwen3Embedder, documents: Sequence[str]) -> np.ndarray:
        texts.extend(documents)
        return original(self, documents)

    monkeypatch.setattr(Qwen3Embedder, "embed_documents", recording)
    return texts


def test_renamed_moved_and_copied_files_reuse_their_vectors(
    tmp_path: Path, checkpoints: dict[str, Path], embedded: list[str]
) -> None:
    folder = tmp_path / "docs"
    (folder / "guides").mkdir(parents=True)
    texts = {
        "a.md": "# Alpha\n\nThe alpha river runs north.\n\n## Banks\n\nWillows grow on its banks.\n",
        "b.md": "# Beta\n\nThe beta lake is deep and cold.\n",
        "guides/c.md": "# Gamma\n\nGamma rays pass through the wall.\n",
        "guides/d.md": "# Delta\n\nThe delta holds seven channels.\n",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    config = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu")
    pipeline = RagPipeline(config)
    first = pipeline.index([str(folder)])
    assert first.files_indexed == 4 and first.passages_reused == 0

    (folder / "a.md").rename(folder / "alpha.md")  # renamed
    shutil.move(str(folder / "guides"), str(folder / "manuals"))  # a subfolder moved within the root
    shutil.copy(folder / "b.md", folder / "b-copy.md")  # copied
    (folder / "new.md").write_text("# Epsilon\n\nA new file about epsilon.\n")  # new: embedded
    embedded.clear()
    second = pipeline.index([str(folder)])
    # Before: all four files were embedded again, as if they were new (6 passages, where 1 is new).
    assert len(embedded) == 1 and "new file about epsilon" in embedded[0], embedded
    assert second.files_indexed == 5 and second.files_removed == 3 and second.files_unchanged == 1
    assert second.passages_reused == first.passages_added and second.passages_added == first.passages_added + 1
    clean = tmp_path / "clean.db"
    RagPipeline(RagConfig(uri=str(clean), embedding_model=config.embedding_model, device="cpu")).index([str(folder)])
    same_index(config.uri, str(clean))


def test_a_renamed_file_that_changed_is_embedded_again(
    tmp_path: Path, checkpoints: dict[str, Path], embedded: list[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# Alpha\n\nThe alpha river runs north.\n")
    (folder / "b.md").write_text("# Beta\n\nThe beta lake is deep.\n")
    config = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu")
    pipeline = RagPipeline(config)
    pipeline.index([str(folder)])
    (folder / "a.md").unlink()
    (folder / "renamed.md").write_text("# Alpha\n\nThe alpha river runs south.\n")
    embedded.clear()
    report = pipeline.index([str(folder)])
    assert report.passages_reused == 0 and len(embedded) == 1
    clean = tmp_path / "clean.db"
    RagPipeline(RagConfig(uri=str(clean), embedding_model=config.embedding_model, device="cpu")).index([str(folder)])
    same_index(config.uri, str(clean))
