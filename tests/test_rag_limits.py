"""Milvus' limits, kept by the store: VARCHAR sizes in bytes, upserts cut under the message size."""

from __future__ import annotations

import pytest

from qwen3_retrieval.rag import store


def test_text_is_cut_in_bytes_never_inside_a_character() -> None:
    text = "日本語" * 30_000  # 3 bytes a character: 270,000 bytes
    cut = store.fit_bytes(text, store.TEXT_BYTES)
    assert len(cut.encode()) <= store.TEXT_BYTES
    assert text.startswith(cut) and len(cut) == store.TEXT_BYTES // 3
    assert store.fit_bytes("short", 10) == "short"


def test_upserts_are_cut_under_the_message_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "UPSERT_BYTES", 10_000)
    rows = [{"text": "x" * 1000, "path": "a.md", "heading": ""} for _ in range(40)]
    pieces = list(store.upsert_pieces(rows, vector_bytes=1024 * 4))
    assert sum(len(p) for p in pieces) == 40 and len(pieces) > 1
    for piece in pieces:
        assert sum(4096 + 1000 + 4 + 256 for _ in piece) <= 10_000
