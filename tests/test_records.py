"""Typed records: what the store writes is what it reads back, old runs still read, newer ones are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.cli import main
from orchestrator.manifest import parse_manifest
from orchestrator.records import RECORD_SCHEMA, LoadRecord, SampleRecord, Timing
from orchestrator.report import build_report
from orchestrator.rescore import rescore_run
from orchestrator.store import RunStore, jsonl_line, read_records
from orchestrator.tasks import build_task


def _answered() -> SampleRecord:
    return SampleRecord(
        id="abstract_algebra/3",
        task="mmlu",
        subject="abstract_algebra",
        prompt_digest="0123456789abcdef",
        gold="B",
        target="t",
        setup="qwen@2",
        request={"messages": [{"role": "user", "content": "Q?"}], "max_tokens": 8, "temperature": 0},
        reply="The answer is B",
        raw={"final_chunk": {"id": "c1"}},
        finish_reason="stop",
        prompt_tokens=20,
        completion_tokens=5,
        token_source="usage",
        token_counts={"usage": 5, "tokenizer": 5},
        timing=Timing(wall_send=1000.0, e2e=0.5, ttft=0.1, chunks=(0.1, 0.2, 0.3, 0.4, 0.5), send_delay=0.001),
        extracted="B",
        rule="opencompass_pattern_41",
        correct=True,
        score_details={},
        attempts=1,
    )


def test_a_record_reads_back_as_written_and_derives_its_latencies() -> None:
    rec = _answered()
    back = SampleRecord.from_json(orjson.loads(jsonl_line(rec.to_json())))
    assert back == rec
    assert back.ttft == 0.1 and back.e2e == 0.5 and back.timing is not None and back.timing.wall_end == 1000.5
    assert back.tpot == pytest.approx((0.5 - 0.1) / 4)
    assert back.itl == pytest.approx([0.1] * 4)
    assert back.answered and back.timed and not back.broken_connection
    # Every field is a key on disk, under its own name.
    assert set(rec.to_json()) >= {"id", "reply", "raw", "finish_reason", "timing", "extracted", "rule", "attempts"}


def test_schema_1_records_read_with_defaults() -> None:
    # As version 1 wrote them: an error record has no timing and no token fields; an answered one
    # has no error class; neither knows the keys added since.
    failed = SampleRecord.from_json(
        {"id": "x/1", "task": "mmlu", "subject": "x", "prompt_digest": "d", "gold": "A", "error": "timed out",
         "error_kind": "transient", "error_type": "timeout", "status": None, "attempts": 3, "reply": None,
         "correct": None, "extracted": None, "rule": None, "request": {"max_tokens": 8}}
    )  # fmt: skip
    assert not failed.answered and failed.broken_connection and failed.timing is None
    assert failed.ttft is None and failed.tpot is None and failed.itl == [] and failed.resends == 0
    answered = SampleRecord.from_json(
        {"id": "x/2", "task": "mmlu", "subject": "x", "gold": "A", "reply": "A", "correct": True, "error": None,
         "timing": {"wall_send": 5.0, "ttft": None, "chunks": [], "e2e": 0.25}}
    )  # fmt: skip
    assert answered.timed and answered.ttft is None and answered.e2e == 0.25
    assert answered.timing is not None and answered.timing.send_delay == 0.0


def test_unknown_keys_survive_a_rewrite() -> None:
    data = {**_answered().to_json(), "annotation": {"by": "reviewer"}, "future_field": [1, 2]}
    rec = SampleRecord.from_json(data)
    assert rec.extra == {"annotation": {"by": "reviewer"}, "future_field": [1, 2]}
    assert rec.to_json() == data


def test_load_records_round_trip() -> None:
    rec = LoadRecord(
        index=7, mode="concurrency", level=4, warmup=False, cooldown=True, queued=0.002, post=0.0001,
        timing=Timing(wall_send=1.0, e2e=0.2, ttft=0.05, chunks=(0.05, 0.2)), completion_tokens=2,
        prompt_token_counts={"usage": 12, "tokenizer": 12},
    )  # fmt: skip
    back = LoadRecord.from_json(orjson.loads(jsonl_line(rec.to_json())))
    assert back == rec and not back.measured and back.tpot == pytest.approx(0.15)
    failed = LoadRecord.from_json({"index": 0, "mode": "poisson", "level": 2.0, "warmup": True, "error": "reset",
                                   "queued": 0.1, "timing": None, "dispatch_lag": 0.003})  # fmt: skip
    assert not failed.timed and failed.dispatch_lag == 0.003


def _run(tmp_path: Path, data_dir: Path, meta_extra: dict[str, Any]) -> tuple[Path, list[SampleRecord]]:
    manifest = parse_manifest(
        {
            "run": {"name": "r", "output_dir": str(tmp_path), "data_dir": str(data_dir)},
            "tasks": {"mmlu": {"limit": 6, "shots": 0}},
            "targets": [{"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "url": "http://h:1"}],
        }
    )
    run = tmp_path / "r"
    store = RunStore(run)
    store.write_meta(
        {
            "run_id": "r",
            "manifest": manifest.to_dict(),
            "data_dir": str(data_dir),
            "setup": {"name": "qwen", "version": "qwen@2"},
            **meta_extra,
        }
    )
    samples = build_task("mmlu", data_dir, limit=6, shots=0).samples()
    records = [
        SampleRecord(
            id=s.id, task="mmlu", subject=s.subject, prompt_digest=s.prompt_digest(), gold=s.gold, target="t",
            setup="qwen@2", reply="The answer is B", extracted="A", rule="stale", correct=False, attempts=1,
            extra={"annotation": i},
        )
        for i, s in enumerate(samples)
    ]  # fmt: skip
    writer = store.writer("t", "mmlu", "qwen@2")
    for r in records:
        writer.write(r)
    store.close()
    return run, records


def test_rescore_rewrites_the_verdicts_and_keeps_everything_else(tmp_path: Path, data_dir: Path) -> None:
    run, written = _run(tmp_path, data_dir, {"record_schema": RECORD_SCHEMA})
    assert rescore_run(run) == {"mmlu": len(written)}
    path = RunStore(run).samples_path("t", "mmlu", "qwen@2")
    after = [SampleRecord.from_json(r) for r in read_records(path)]
    assert [r.extracted for r in after] == ["B"] * len(written)
    assert [r.correct for r in after] == [w.gold == "B" for w in written]
    assert [r.extra for r in after] == [{"annotation": i} for i in range(len(written))]
    assert [(r.id, r.reply, r.attempts) for r in after] == [(w.id, w.reply, w.attempts) for w in written]


def test_a_run_without_a_schema_reads_as_schema_1(tmp_path: Path, data_dir: Path) -> None:
    run, written = _run(tmp_path, data_dir, {})
    row = build_report(run)["rows"][0]
    assert row["tasks"]["mmlu"]["n"] == len(written)


def test_a_newer_schema_is_refused_in_one_line(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = _run(tmp_path, data_dir, {"record_schema": RECORD_SCHEMA + 1})
    for argv in (["report", str(run)], ["score", str(run)], ["bench", "--resume", str(run), "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"schema {RECORD_SCHEMA + 1}" in err, err
    # Nothing was rewritten by the refusals.
    assert json.loads((run / "run.json").read_text())["record_schema"] == RECORD_SCHEMA + 1


def test_a_line_that_is_not_a_record_is_one_line(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = _run(tmp_path, data_dir, {"record_schema": RECORD_SCHEMA})
    path = RunStore(run).samples_path("t", "mmlu", "qwen@2")
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "x/1", "note": "hand-written, no task"}\n')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a record" in err and "Traceback" not in err
