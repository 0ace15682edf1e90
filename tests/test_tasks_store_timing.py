"""Benchmarks on the original local data, the store's crash safety, and timing maths."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from orchestrator import timing
from orchestrator.records import Timing
from orchestrator.runtime import synced
from orchestrator.store import SYNC_INTERVAL, RunStore, SampleWriter, latest_by_id, read_records
from orchestrator.tasks import DataError, build_task, stratified_subset


def test_mmlu_full_split_and_prompt(data_dir: Path) -> None:
    task = build_task("mmlu", data_dir)
    samples = task.samples()
    assert len(samples) == 14042
    assert len({s.subject for s in samples}) == 57
    assert len({s.id for s in samples}) == 14042
    s = next(x for x in samples if x.id == "anatomy/0")
    assert len(s.messages) == 11  # 5 shots as user/assistant turns + the question
    assert [r for r, _ in s.messages[:2]] == ["user", "assistant"]
    assert s.messages[1][1] in ("A\n", "B\n", "C\n", "D\n")  # the BOT round's "{target}\n"
    first = s.messages[0][1]
    hint = "There is a single choice question about anatomy. Answer the question by replying A, B, C or D."
    assert first.startswith(hint + "\nQuestion: ")
    assert "\nA. " in first and first.endswith("Answer: ")
    assert s.messages[-1][1].startswith(hint + "\nQ: ") and s.messages[-1][1].endswith("\nA: ")
    assert s.gold in "ABCD"


def test_ceval_val_split_zero_shot_chinese(data_dir: Path) -> None:
    samples = build_task("ceval", data_dir).samples()
    assert len(samples) == 1346
    assert len({s.subject for s in samples}) == 52
    law = next(x for x in samples if x.id == "law/0")
    # Qwen's evaluate_chat_ceval.py: its system prompt, the question, a blank line, the options.
    assert law.messages[0] == ("system", "You are a helpful assistant.")
    text = law.messages[1][1]
    assert text.startswith(law.question + "\n\nA. ") and text.endswith("\n") and "答案" not in text
    assert law.gold == "C" and law.choices[2].startswith("类比推理")


def test_limit_is_stratified_and_deterministic(data_dir: Path) -> None:
    a = [s.id for s in build_task("mmlu", data_dir, limit=200).samples()]
    b = [s.id for s in build_task("mmlu", data_dir, limit=200).samples()]
    assert a == b and len(a) == 200
    per_subject = Counter(i.split("/")[0] for i in a)
    assert len(per_subject) == 57
    # Proportional shares: the largest subject gets the most questions.
    assert per_subject.most_common(1)[0][0] == "professional_law"
    few = stratified_subset({"x": list(range(10)), "y": list(range(10)), "z": list(range(10))}, 2, "s")
    assert sum(len(v) for v in few.values()) == 2


def test_subjects_option_and_unknown_subject(data_dir: Path) -> None:
    task = build_task("ceval", data_dir, subjects=["law", "logic"])
    assert {s.subject for s in task.samples()} == {"law", "logic"}
    with pytest.raises(DataError, match="nonexistent"):
        build_task("ceval", data_dir, subjects=["nonexistent"]).samples()
    with pytest.raises(DataError):
        build_task("mmlu", data_dir / "nowhere").samples()


def test_writer_cuts_torn_tail_and_latest_record_wins(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    w = SampleWriter(path)
    w.write({"id": "a", "v": 1})
    w.write({"id": "b", "v": 1})
    w.close()
    with open(path, "a") as f:
        f.write('{"id": "c", "v"')  # kill -9 mid-write
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    w = SampleWriter(path)
    w.write({"id": "a", "v": 2})
    w.close()
    assert path.read_text().count("\n") == 3
    assert latest_by_id(path)["a"]["v"] == 2 and "c" not in latest_by_id(path)


def test_records_are_fsynced_from_a_thread_within_the_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (threads.append(threading.current_thread()), real(fd)))
    store = RunStore(tmp_path / "run")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        synced_once = asyncio.Event()

        def fsync(fd: int) -> None:
            threads.append(threading.current_thread())
            real(fd)
            if not loop.is_closed():  # store.close() below syncs after the loop is gone
                loop.call_soon_threadsafe(synced_once.set)

        monkeypatch.setattr(os, "fsync", fsync)
        async with synced(store):
            store.writer("t", "k", "s").write({"id": "a"})
            assert threads == []  # the loop does not wait on the disk for a record
            # The ticker syncs every half interval: the record is on disk within one interval.
            await asyncio.wait_for(synced_once.wait(), SYNC_INTERVAL)
            assert len(threads) == 1 and threads[0] is not threading.main_thread()
            store.writer("t", "k", "s").write({"id": "b"})
        assert len(threads) == 2  # and once more at the end, whatever the ticker's phase

    asyncio.run(main())
    store.close()  # nothing new since: no fsync
    assert len(threads) == 2
    assert [r["id"] for r in read_records(store.samples_path("t", "k", "s"))] == ["a", "b"]
    w = SampleWriter(tmp_path / "s.jsonl")
    w.write({"id": "c", "x": float("nan"), 1: "int key"})
    w.close()
    assert len(threads) == 3  # close syncs
    assert list(read_records(tmp_path / "s.jsonl")) == [{"id": "c", "x": None, "1": "int key"}]


def test_timing_metrics() -> None:
    rec = Timing.from_json({"wall_send": 0.0, "ttft": 0.1, "chunks": [0.1, 0.15, 0.25], "e2e": 0.3})
    assert rec.ttft == 0.1 and rec.wall_end == 0.3
    assert rec.tpot(3) == pytest.approx(0.1)
    assert rec.itl == pytest.approx([0.05, 0.1])
    assert rec.tpot(1) is None
    assert timing.percentile([1, 2, 3, 4], 50) == 2.5
    assert timing.percentile([5], 99) == 5
    assert timing.percentile([], 50) is None
    # Union of intervals: overlap counted once, gaps (a resume a day later) not at all.
    assert timing.busy_seconds([(0, 2), (1, 3), (100, 101)]) == 4
