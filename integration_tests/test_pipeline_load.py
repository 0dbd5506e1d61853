"""One pipeline under an agent's load: many threads and tasks at once, questions during an index run, two pipelines
on one file, runs killed by a real signal, and a file another process holds.

Before: each call opened the store and closing it stopped the in-process Milvus Lite server that the other calls
were using, so most concurrent calls failed; and a run killed between a file's passages and its record left
passages that no later run removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MilvusServer, same_index
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.pipeline import RagConfig, RagPipeline
from qwen3_retrieval.rag.types import Source

TOPICS = [
    "Milvus builds indexes such as HNSW over vectors for similarity search.",
    "The capital of China is Beijing, a city in the north.",
    "Gravity is a force that attracts two bodies; mass bends space.",
    "Rivers carry water from mountains to the sea through valleys.",
    "Light is energy that travels as waves and as particles.",
    "Volcanoes erupt when molten rock rises through the crust.",
    "Bees collect nectar and pollen and make honey in hives.",
    "A compiler turns source code into machine instructions.",
    "Deserts receive little rain and have sparse plants.",
    "Tea is brewed from the leaves of the camellia plant.",
]
QUESTIONS = ["gravity", "What is the capital of China?", "rivers", "how do I index vectors?", "honey", "rain"]


def write_corpus(folder: Path, texts: list[str], prefix: str = "note") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"{prefix}-{i:02d}.md").write_text(f"# {prefix.title()} {i}\n\n{text}\n\n## More\n\n{text[::-1]}\n")


def key(sources: list[Source]) -> list[tuple[str, str, str, str]]:
    return [(s.text, s.path, s.heading, s.location) for s in sources]


def assert_same(got: list[Source], expected: list[Source]) -> None:
    assert key(got) == key(expected)
    assert [s.score for s in got] == pytest.approx([s.score for s in expected], abs=1e-5)


@pytest.fixture(params=["lite", "server"])
def where(request: pytest.FixtureRequest, tmp_path: Path, checkpoints: dict[str, Path]) -> Iterator[RagConfig]:
    """A configuration over a Milvus Lite file, or over a real Milvus server started for the test."""
    server = None
    if request.param == "server":
        (tmp_path / "milvus-data").mkdir()
        server = MilvusServer(tmp_path / "milvus-data")
        server.start()
        uri = server.uri
    else:
        uri = str(tmp_path / "rag.db")
    try:
        yield RagConfig(uri=uri, embedding_model=str(checkpoints["embedding"]), device="cpu",
                        reranker_model=str(checkpoints["reranker"]))  # fmt: skip
    finally:
        if server is not None:
            server.stop()


def test_one_pipeline_serves_threads_tasks_and_both_retrievers_at_once(
    where: RagConfig, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from qwen3_retrieval.langchain import Qwen3RagRetriever as LangChainRetriever
    from qwen3_retrieval.llama_index import Qwen3RagRetriever as LlamaIndexRetriever

    write_corpus(tmp_path / "docs", TOPICS)
    with RagPipeline(where) as rag:
        rag.index([tmp_path / "docs"])
        expected = {q: rag.retrieve(q) for q in QUESTIONS}
        capfd.readouterr()
        caplog.clear()
        caplog.set_level(logging.WARNING)
        # 16 threads, 4 questions each.
        results: list[tuple[str, Any]] = []

        def ask(n: int) -> None:
            for i in range(4):
                question = QUESTIONS[(n + i) % len(QUESTIONS)]
                try:
                    results.append((question, rag.retrieve(question)))
                except Exception as err:  # every failure is reported, not only the first
                    results.append((question, err))

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failures = [r for r in results if isinstance(r[1], Exception)]
        assert not failures, f"{len(failures)} of {len(results)} calls failed, first: {failures[0][1]!r}"
        assert len(results) == 64
        for question, got in results:
            assert_same(got, expected[question])

        # 64 asyncio tasks, then each framework's retriever 10 times, all in one event loop at once.
        langchain = LangChainRetriever(pipeline=rag)
        llama_index = LlamaIndexRetriever(rag)

        async def everything() -> list[Any]:
            calls = [rag.aretrieve(QUESTIONS[n % len(QUESTIONS)]) for n in range(64)]
            calls += [langchain.ainvoke(QUESTIONS[n % len(QUESTIONS)]) for n in range(10)]
            calls += [llama_index.aretrieve(QUESTIONS[n % len(QUESTIONS)]) for n in range(10)]
            return await asyncio.gather(*calls)

        answers = asyncio.run(everything())
        for n, got in enumerate(answers[:64]):
            assert_same(got, expected[QUESTIONS[n % len(QUESTIONS)]])
        for n, docs in enumerate(answers[64:74]):
            want = expected[QUESTIONS[n % len(QUESTIONS)]]
            assert [d.page_content for d in docs] == [s.text for s in want]
        for n, nodes in enumerate(answers[74:]):
            want = expected[QUESTIONS[n % len(QUESTIONS)]]
            assert [node.node.get_content() for node in nodes] == [s.text for s in want]
    # Nothing reached stderr or the logs: before, 6,600 lines of pymilvus and Milvus Lite tracebacks did.
    assert capfd.readouterr().err == ""
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_questions_during_an_index_run_see_the_index_before_or_after_it(where: RagConfig, tmp_path: Path) -> None:
    write_corpus(tmp_path / "docs", TOPICS[:6])
    write_corpus(tmp_path / "more", TOPICS[6:], prefix="extra")
    with RagPipeline(where) as rag:
        rag.index([tmp_path / "docs"])
        before = {q: key(rag.retrieve(q)) for q in QUESTIONS}
        indexing = threading.Thread(target=rag.index, args=([tmp_path / "more"],))
        seen: list[tuple[str, Any]] = []

        def ask(n: int) -> None:
            i = 0
            while indexing.is_alive() or i < 2:  # at least twice, then for as long as the run lasts
                question = QUESTIONS[(n + i) % len(QUESTIONS)]
                try:
                    seen.append((question, key(rag.retrieve(question))))
                except Exception as err:
                    seen.append((question, err))
                i += 1

        askers = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
        indexing.start()
        for thread in askers:
            thread.start()
        indexing.join()
        for thread in askers:
            thread.join()
        after = {q: key(rag.retrieve(q)) for q in QUESTIONS}
    failures = [s for s in seen if isinstance(s[1], Exception)]
    assert not failures, f"{len(failures)} of {len(seen)} calls failed, first: {failures[0][1]!r}"
    assert before != after  # the run changed what questions find
    for question, got in seen:
        assert got in (before[question], after[question])


def test_a_question_asked_while_a_batch_is_written_waits_for_it(
    where: RagConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymilvus

    write_corpus(tmp_path / "docs", TOPICS[:6])
    write_corpus(tmp_path / "more", TOPICS[6:], prefix="extra")
    with RagPipeline(where) as rag:
        rag.index([tmp_path / "docs"])
        before = key(rag.retrieve("honey"))
        upsert = pymilvus.MilvusClient.upsert
        asked: list[threading.Thread] = []
        answers: list[Any] = []
        waited: list[bool] = []

        def upsert_with_a_question(self: Any, *args: Any, **kwargs: Any) -> Any:
            passages = (args[0] if args else kwargs.get("collection_name")) == where.collection
            if passages and not asked:  # the run's one batch is being written: a question now waits until it is
                asked.append(threading.Thread(target=lambda: answers.append(key(rag.retrieve("honey")))))
                asked[0].start()
                asked[0].join(timeout=1.0)
                waited.append(asked[0].is_alive())
            return upsert(self, *args, **kwargs)

        monkeypatch.setattr(pymilvus.MilvusClient, "upsert", upsert_with_a_question)
        rag.index([tmp_path / "more"])
        asked[0].join()
        monkeypatch.undo()
        after = key(rag.retrieve("honey"))
    assert before != after  # the batch changed what the question finds
    assert waited == [True] and answers == [after]


def test_two_pipelines_on_one_file_in_one_process(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu",
                      reranker_model=str(checkpoints["reranker"]))  # fmt: skip
    write_corpus(tmp_path / "a", TOPICS[:5], prefix="alpha")
    write_corpus(tmp_path / "b", TOPICS[5:], prefix="beta")
    first, second = RagPipeline(where), RagPipeline(where)
    # Two index runs at once, one per pipeline: they take turns, and leave what one run of both folders leaves.
    runs = [threading.Thread(target=p.index, args=([tmp_path / f],)) for p, f in ((first, "a"), (second, "b"))]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    expected = {q: first.retrieve(q) for q in QUESTIONS}
    errors: list[BaseException] = []

    def ask(pipeline: RagPipeline) -> None:
        try:
            for question in QUESTIONS:
                assert_same(pipeline.retrieve(question), expected[question])
        except BaseException as err:
            errors.append(err)

    askers = [threading.Thread(target=ask, args=(p,)) for p in (first, second) * 4]
    for thread in askers:
        thread.start()
    first.close()  # while calls are in flight on both: the other pipeline keeps working
    for thread in askers:
        thread.join()
    assert not errors, errors
    for question in QUESTIONS:
        assert_same(second.retrieve(question), expected[question])
    second.close()
    first.close()
    clean = RagConfig(uri=str(tmp_path / "clean.db"), embedding_model=where.embedding_model, device="cpu")
    with RagPipeline(clean) as rag:
        rag.index([tmp_path / "a"])
        rag.index([tmp_path / "b"])
    assert same_index(where.uri, clean.uri) == 20


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qwen3_retrieval.cli", *args]


def _as_from_a_terminal() -> None:
    # A shell that runs a job in the background (as CI may run this suite) starts it with SIGINT ignored, and a
    # Python started so never sees Ctrl-C: the command is run here as a user at a terminal runs it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_run_killed_anywhere_leaves_exactly_a_clean_index_after_the_next_run(
    sig: signal.Signals, tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    folder = tmp_path / "docs"
    texts = [f"{TOPICS[i % len(TOPICS)]} Note number {i} of the set." for i in range(300)]
    write_corpus(folder, texts)
    uri = tmp_path / "rag.db"
    model = ["--embedding-model", str(checkpoints["embedding"]), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(_command("index", str(folder), "--uri", str(uri), *model), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=_as_from_a_terminal)  # fmt: skip
    # Killed while it writes: once the store exists, at a random moment of the run (seeded by the signal).
    deadline = time.monotonic() + 120
    while not (uri / "collections" / "qwen3_rag").exists() and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.Random(int(sig)).uniform(0.0, 1.0))
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    if sig != signal.SIGKILL and run.returncode != 0:  # not done yet when the signal came: one line, no traceback
        assert run.returncode == (130 if sig == signal.SIGINT else 143), err
        assert err == "qwen3-rag: interrupted; run the same command again to finish\n"
    # Files deleted before the next run, among them some the killed run stored, or was storing.
    for i in range(0, 300, 3):
        (folder / f"note-{i:02d}.md").unlink()
    again = subprocess.run(_command("index", str(folder), "--uri", str(uri), *model), env=env, capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    clean = tmp_path / "clean.db"
    with RagPipeline(RagConfig(uri=str(clean), embedding_model=str(checkpoints["embedding"]), device="cpu")) as rag:
        rag.index([folder])
    assert same_index(str(uri), str(clean)) == 400  # same ids, paths, texts and vectors: nothing of a missing file


def test_a_write_stopped_between_passages_and_record_leaves_nothing_of_a_deleted_file(
    tmp_path: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kill point that the old design missed, hit every time: passages stored, the file's record not yet."""
    from pymilvus import MilvusClient

    folder = tmp_path / "docs"
    write_corpus(folder, TOPICS[:4])
    where = RagConfig(uri=str(tmp_path / "rag.db"), embedding_model=str(checkpoints["embedding"]), device="cpu")
    upsert = MilvusClient.upsert
    wrote_passages = []

    def killed_after_passages(self: MilvusClient, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        if collection_name == "qwen3_rag_meta" and wrote_passages:
            raise KeyboardInterrupt  # as SIGINT lands: after the passages' upsert, before the record's
        result = upsert(self, collection_name, *args, **kwargs)
        if collection_name == "qwen3_rag":
            wrote_passages.append(True)
        return result

    monkeypatch.setattr(MilvusClient, "upsert", killed_after_passages)
    with RagPipeline(where) as rag, pytest.raises(KeyboardInterrupt):
        rag.index([folder])
    monkeypatch.setattr(MilvusClient, "upsert", upsert)
    assert wrote_passages
    (folder / "note-01.md").unlink()
    with RagPipeline(where) as rag:
        rag.index([folder])
    clean = RagConfig(uri=str(tmp_path / "clean.db"), embedding_model=where.embedding_model, device="cpu")
    with RagPipeline(clean) as rag:
        rag.index([folder])
    assert same_index(where.uri, clean.uri) == 6


def test_a_file_another_process_writes_is_one_clear_line(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    uri = tmp_path / "rag.db"
    folder = tmp_path / "docs"
    write_corpus(folder, TOPICS[:2])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from qwen3_retrieval.rag.store import PassageStore; "
         f"s = PassageStore({str(uri)!r}, 'qwen3_rag'); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        model = ["--embedding-model", str(checkpoints["embedding"]), "--device", "cpu"]
        done = subprocess.run(_command("index", str(folder), "--uri", str(uri), *model), capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        # Before: "Milvus Lite cannot open ...: if its files are damaged, move it away", wrong for a healthy file.
        assert done.returncode == 1
        assert done.stderr == (
            f"qwen3-rag: error: another process is writing this index ({uri} is in use); wait for it or use a "
            "Milvus server\n"
        )
        with pytest.raises(RagError, match="another process is writing this index"):
            RagPipeline(RagConfig(uri=str(uri))).retrieve("anything")
    finally:
        holder.communicate(input="", timeout=60)
    with RagPipeline(RagConfig(uri=str(uri), embedding_model=str(checkpoints["embedding"]), device="cpu")) as rag:
        assert rag.index([folder]).files_indexed == 2  # once the other process let go


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    command = shutil.which("qwen3-rag", path=str(Path(sys.executable).parent))
    assert command is not None
    write_corpus(tmp_path / "docs", [f"{TOPICS[i % len(TOPICS)]} Note {i}." for i in range(300)])  # seconds of work
    model = ["--embedding-model", str(checkpoints["embedding"]), "--device", "cpu"]
    run = subprocess.Popen([command, "index", str(tmp_path / "docs"), "--uri", str(tmp_path / "rag.db"), *model],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=_as_from_a_terminal)  # fmt: skip
    time.sleep(0.5)  # Python is up and the libraries are importing (torch alone takes longer than that)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    # Before: a 24-line KeyboardInterrupt traceback.
    assert (run.returncode, err) == (130, "qwen3-rag: interrupted; run the same command again to finish\n")
