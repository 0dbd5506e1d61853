"""A damaged or half-created Milvus Lite store is noticed, repaired where it can be, and never looks empty.

The damage is real: files of the store truncated on disk, as a full disk or a crash leaves them. A half-created
store is made with pymilvus directly, in each state a ``kill -9`` can leave between the steps of creating one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.pipeline import RagConfig, index, release_pipelines, retrieve
from qwen3_retrieval.rag.store import PassageStore

COLLECTION = "qwen3_rag"


def passages(uri: Path) -> list[tuple[str, str]]:
    with PassageStore(str(uri), COLLECTION) as store:
        assert store.exists()
        rows = store.client.query(COLLECTION, filter="", output_fields=["path", "text"], limit=16384)
    return sorted((row["path"], row["text"]) for row in rows)


@pytest.fixture
def built(tmp_path: Path, docs_folder: Path, checkpoints: dict[str, Path]) -> tuple[RagConfig, list[tuple[str, str]]]:
    """A store indexed once, closed, with what a clean run stores."""
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu")
    index([str(docs_folder)], where)
    release_pipelines()  # the process lets go of the file, whose damage is then read when it is opened again
    return where, passages(Path(where.uri))


def test_lost_passages_are_reported_by_ask_and_repaired_by_index(
    built: tuple[RagConfig, list[tuple[str, str]]], docs_folder: Path, checkpoints: dict[str, Path]
) -> None:
    where, clean = built
    manifest = Path(where.uri) / "collections" / COLLECTION / "manifest.json"
    with manifest.open("r+b") as file:
        file.truncate(100)
    # Before: ask answered "the collection is empty" with exit 0, and index reported every file unchanged.
    damaged = rf"is damaged: its file records list {len(clean)} passages but collection '{COLLECTION}' holds 0"
    with pytest.raises(RagError, match=damaged):
        retrieve("gravity", where, reranker_model=str(checkpoints["reranker"]))
    warnings: list[str] = []
    report = index([str(docs_folder)], where, warn=warnings.append)
    assert report.files_indexed == 3 and report.passages_total == len(clean)
    assert [w for w in warnings if "had lost the passages of 3 files" in w], warnings
    assert passages(Path(where.uri)) == clean
    assert retrieve("gravity", where, reranker_model=str(checkpoints["reranker"]))


def test_unreadable_store_files_are_one_line(built: tuple[RagConfig, list[tuple[str, str]]], models: list[str]) -> None:
    where, _ = built
    data = next((Path(where.uri) / "collections" / COLLECTION).rglob("*.parquet"))
    with data.open("r+b") as file:
        file.truncate(200)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "qwen3_retrieval.cli", "ask", "gravity", "--uri", where.uri, *models, "--no-llm"],
        capture_output=True,
        text=True,
        env=env,
    )
    # Before: 18 lines of pymilvus' log and traceback came first.
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"qwen3-rag: error: Milvus Lite cannot open {where.uri}: Could not open Parquet")


def _meta_only(store: PassageStore) -> None:  # killed after creating the settings collection
    store.client.drop_collection(COLLECTION)
    store.client.delete(f"{COLLECTION}_meta", filter='key != ""')


def _settings_only(store: PassageStore) -> None:  # killed after recording the settings
    store.client.drop_collection(COLLECTION)
    store.client.delete(f"{COLLECTION}_meta", filter='key != "settings"')


@pytest.mark.parametrize("leave", [_meta_only, _settings_only])
def test_a_half_created_store_is_completed_by_the_next_run(
    built: tuple[RagConfig, list[tuple[str, str]]], docs_folder: Path, leave: Callable[[PassageStore], None]
) -> None:
    where, clean = built
    with PassageStore(where.uri, COLLECTION) as store:
        store.exists()
        leave(store)
    # Before: "built by an older qwen3-rag", or "built with embedding model None".
    report = index([str(docs_folder)], where)
    assert report.files_indexed == 3
    assert passages(Path(where.uri)) == clean


def _settings_record_gone(store: PassageStore) -> None:
    store.client.delete(f"{COLLECTION}_meta", filter='key == "settings"')


def _settings_collection_gone(store: PassageStore) -> None:
    store.client.drop_collection(f"{COLLECTION}_meta")


def _empty_passages_no_settings(store: PassageStore) -> None:  # what a restarting server briefly showed
    store.client.delete(f"{COLLECTION}_meta", filter='key != ""')
    store.client.delete(COLLECTION, filter='id != ""')


@pytest.mark.parametrize(
    ("leave", "damage"),
    [
        (_settings_record_gone, "holds passages but the record of its settings is gone"),
        (_settings_collection_gone, "holds passages but its settings collection is gone"),
        (_empty_passages_no_settings, "exists but the record of its settings is gone"),
    ],
)
def test_a_collection_without_readable_settings_is_damaged_never_created_again(
    built: tuple[RagConfig, list[tuple[str, str]]],
    docs_folder: Path,
    leave: Callable[[PassageStore], None],
    damage: str,
) -> None:
    where, clean = built
    with PassageStore(where.uri, COLLECTION) as store:
        store.exists()
        leave(store)
        held = store.count()
    # Before: an empty collection without settings was dropped and created again, which on a restarting
    # server (a collection listed, its records not yet readable) failed with "collection already exists".
    for _ in range(2):
        with pytest.raises(RagError, match=rf"is damaged: it {damage}.*--recreate to rebuild it"):
            index([str(docs_folder)], where)
    with pytest.raises(RagError, match=r"is damaged"):
        retrieve("gravity", where)
    assert len(passages_any(Path(where.uri))) == held  # nothing stored was lost or replaced
    index([str(docs_folder)], where, recreate=True)
    assert passages(Path(where.uri)) == clean


def passages_any(uri: Path) -> list[dict[str, str]]:
    with PassageStore(str(uri), COLLECTION) as store:
        store.client.load_collection(COLLECTION)
        return store.client.query(COLLECTION, filter="", output_fields=["path"], limit=16384)


def test_a_store_of_another_schema_is_refused_not_misread(
    built: tuple[RagConfig, list[tuple[str, str]]], docs_folder: Path, checkpoints: dict[str, Path]
) -> None:
    import json

    where, _ = built
    with PassageStore(where.uri, COLLECTION) as store:
        older = {**(store.open() or {}), "schema": 1}
        store.client.upsert(store.meta, [{"key": "settings", "value": json.dumps(older), "unused": [0.0, 0.0]}])
    # Before: the schema was written but never read, so a store of another layout was read as if it were ours.
    another = r"built by another version of qwen3-rag \(schema 1, this one reads 2\).*--recreate"
    with pytest.raises(RagError, match=another):
        retrieve("gravity", where, reranker_model=str(checkpoints["reranker"]))
    with pytest.raises(RagError, match=another):
        index([str(docs_folder)], where)
