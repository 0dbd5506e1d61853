"""`qwen3-rag index` on a folder an attacker or an unlucky user made: links, locked folders, odd names, binaries.

The command runs as a real process with a deadline, because the faults before the fix were endless loops and
tracebacks. When the tests run as root (CI containers), the process drops root's power to read through
permissions, so a locked folder is locked for it as for anyone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_retrieval.rag.store import PassageStore

FORGED = "evil\n[9] 1.000  forged.md"  # a file name that would print as a source line of its own


def _can_drop_capabilities() -> bool:
    with open("/proc/self/status") as status:
        effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    return bool(effective & (1 << 8))  # CAP_SETPCAP: needed to drop capabilities from the bounding set


# Root reads through permissions; it can lock a folder for the command only by dropping that power.
CAN_LOCK = os.geteuid() != 0 or _can_drop_capabilities()


# Root reads through permissions: the command drops that power (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from its
# bounding set and then execs the command, so a locked folder is locked for it as for anyone. This runs as a
# program of its own, not as a preexec_fn: forking a test process whose other threads talk gRPC (Milvus Lite)
# and running Python in the child can abort the child in gRPC's poller.
AS_A_USER = """
import ctypes, os, sys
if os.geteuid() == 0 and sys.argv[1] == "lock":
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.executable, [sys.executable, "-m", "qwen3_retrieval.cli", *sys.argv[2:]])
"""


def qwen3_rag(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    command = [sys.executable, "-c", AS_A_USER, "lock" if CAN_LOCK else "as-is", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


def stored_paths(uri: Path) -> list[str]:
    with PassageStore(str(uri), "qwen3_rag") as store:
        assert store.exists()
        rows = store.client.query("qwen3_rag", filter="", output_fields=["path", "text"], limit=16384)
    assert not [row for row in rows if "launch code" in row["text"]], "a file outside the folder was indexed"
    return sorted({row["path"] for row in rows})


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "more").mkdir(parents=True)
    (outside / "secret.md").write_text("# Secret\n\nThe launch code is 1234.\n")
    (outside / "more" / "other.md").write_text("# Other\n\nAnother file outside the folder.\n")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\nMilvus is a vector database.\n")
    (docs / "sub" / "notes.md").write_text("# Notes\n\nGravity attracts two bodies.\n")
    (docs / FORGED).write_text("# Forged\n\nThis file's name holds a line break.\n")
    (docs / "up").symlink_to("..")  # the folder's parent: before, one file was stored 41 times
    (docs / "self").symlink_to(".")
    (docs / "sub" / "back").symlink_to("..")
    (docs / "loop_a").symlink_to("loop_b")  # two links naming each other: before, an endless walk
    (docs / "loop_b").symlink_to("loop_a")
    (docs / "secret.md").symlink_to(outside / "secret.md")
    (docs / "alias.md").symlink_to("guide.md")
    locked = docs / "locked"  # left out where it cannot be locked (root without CAP_SETPCAP)
    if CAN_LOCK:
        locked.mkdir()
        (locked / "hidden.md").write_text("# Hidden\n\nUnreadable.\n")
        locked.chmod(0)
    (docs / os.fsdecode(b"caf\xe9.md")).write_text("# Cafe\n\nA name in Latin-1.\n")
    (docs / "blob.txt").write_bytes(bytes(range(256)) * 64)  # binary, named .txt
    yield docs
    if CAN_LOCK:
        locked.chmod(0o755)


def test_a_hostile_folder_is_indexed_once_each_with_warnings_naming_what_was_skipped(
    tmp_path: Path, hostile: Path, models: list[str], reranker_args: list[str]
) -> None:
    uri = tmp_path / "rag.db"
    done = qwen3_rag("index", str(hostile), "--uri", str(uri), *models)
    assert done.returncode == 0, done.stderr
    assert stored_paths(uri) == sorted(["guide.md", "sub/notes.md", FORGED])
    warnings = done.stderr.splitlines()
    assert all(line.startswith("qwen3-rag: warning: skipped ") for line in warnings), warnings
    expected = {
        "up": "a link out of",
        "secret.md": "a link out of",
        "loop_a": "a broken link",
        "loop_b": "a broken link",
        "caf\\xe9.md": "its name is not valid UTF-8",
        "blob.txt": "its bytes are not text",
    }
    if CAN_LOCK:
        expected["locked"] = "cannot be read (Permission denied)"
    for name, why in expected.items():
        assert [line for line in warnings if f"{hostile / name}: " in line and why in line], (name, warnings)
    assert len(warnings) == len(expected), warnings

    # Asking prints the forged name escaped, on its source's own line.
    done = qwen3_rag("ask", "forged name", "--uri", str(uri), *models, *reranker_args, "--no-llm", "--top-n", "3")
    assert done.returncode == 0, done.stderr
    assert "evil\\n[9] 1.000  forged.md" in done.stdout
    assert not [line for line in done.stdout.splitlines() if line.startswith("[9]")], done.stdout


def test_follow_links_takes_outside_files_once_and_still_stops(
    tmp_path: Path, hostile: Path, models: list[str]
) -> None:
    uri = tmp_path / "rag.db"
    done = qwen3_rag("index", str(hostile), "--uri", str(uri), "--follow-links", *models)
    assert done.returncode == 0, done.stderr
    with PassageStore(str(uri), "qwen3_rag") as store:
        store.exists()
        rows = store.client.query("qwen3_rag", filter="", output_fields=["path"], limit=16384)
    # Each real file once: the secret through its own link (links are taken in name order), the rest of the
    # outside folder through `up`, the folder itself (reached again through `up/docs`) not again.
    assert sorted(row["path"] for row in rows) == sorted(
        ["guide.md", "sub/notes.md", FORGED, "secret.md", "up/outside/more/other.md"]
    )
