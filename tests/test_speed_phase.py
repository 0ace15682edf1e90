"""The bench's controlled speed phase against scripted servers: what the accuracy pass asks
(top-k logprobs) does not reach the table's speed; the phase waits for every accuracy pass, runs
one target at a time, skips noise-floor rows, and a resumed run measures only what is missing.
What an answer costs, against records of known lengths, finish reasons and timings."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from orchestrator.cli.bench import _record_outcomes
from orchestrator.manifest import Manifest, parse_manifest, with_noise_floor
from orchestrator.records import SampleRecord, ServerTiming, Timing
from orchestrator.report import build_report, write_report
from orchestrator.report.model import Report
from orchestrator.report.speed import NO_PHASE
from orchestrator.runner import Runner
from orchestrator.speedphase import SETUP
from orchestrator.store import RunStore, read_records
from orchestrator.summary import answer_costs
from orchestrator.tasks import build_task
from orchestrator.verdicts import _cost_changes
from tests.support.fake_openai import chunk
from tests.support.stored_runs import RUNS

SPEED_TOKENS = 12  # the phase's replies (the logprobs probe asks 8, MMLU answers are 6 here)
PHASE = {"requests": 8, "batch1_requests": 3, "warmup": 1, "input_tokens": 24, "output_tokens": SPEED_TOKENS}
Events = list[tuple[str, str, str]]  # (server, "speed" or "accuracy", "start" or "end"), in order


def paced(name: str, events: Events, plain_s: float = 0.002, logprobs_s: float = 0.03) -> Any:
    """A server whose every token takes ``logprobs_s`` when top-k logprobs are asked, else
    ``plain_s`` (llama-server's cost of logprobs, exaggerated); the phase's requests (max_tokens
    SPEED_TOKENS) run their whole length, answers are "B" and five more tokens."""

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        k = body.get("top_logprobs", 0) if body.get("logprobs") else 0
        kind = "speed" if body.get("max_tokens") == SPEED_TOKENS else "accuracy"
        n = SPEED_TOKENS if kind == "speed" else 6
        events.append((name, kind, "start"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await asyncio.sleep(logprobs_s if k else plain_s)
            text = "B" if i == 0 else " x"
            ev = chunk(text, None if i < n - 1 else ("length" if kind == "speed" else "stop"))
            if k:
                top = [{"token": t, "logprob": -0.1 * (j + 1)} for j, t in enumerate([text, "A", "C", "D"][:k])]
                ev["choices"][0]["logprobs"] = {"content": [{"token": text, "logprob": -0.1, "top_logprobs": top}]}
            await resp.write(f"data: {json.dumps(ev)}\n\n".encode())
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        events.append((name, kind, "end"))
        return resp

    return handler


def _manifest(tmp_path: Path, data_dir: Path, urls: dict[str, str], **extra: Any) -> Manifest:
    quants = ("BF16", "GPTQ-Int4", "AWQ")
    targets = [
        {"name": name, "model": "M", "quantization": quants[i], "backend": "openai", "url": url}
        for i, (name, url) in enumerate(urls.items())
    ]
    targets[0]["tokenizer"] = str(data_dir / "qwen2-tokenizer")  # the model's: every row's prompts
    return with_noise_floor(
        parse_manifest(
            {
                "run": {"name": "s", "output_dir": str(tmp_path), **extra.pop("run", {})},
                "tasks": {"mmlu": {"limit": 16, "shots": 0}},
                "client": {"concurrency": 4, "retries": 0, **extra.pop("client", {})},
                "speed_phase": {**PHASE, **extra.pop("speed_phase", {})},
                "targets": targets,
                **extra,
            }
        )
    )


async def _bench(m: Manifest, run: Path, data_dir: Path, speed_done: tuple[str, ...] = ()) -> Runner:
    store = RunStore(run)
    meta = store.read_meta()
    if meta is None:
        store.write_meta({"run_id": run.name, "manifest": m.to_dict(), "samples": {"mmlu": 16}})
    runner = Runner(m, [build_task("mmlu", data_dir, limit=16, shots=0)], store, speed_done=speed_done)
    outcomes = await runner.run()
    store.close()
    assert all(o.failure is None for o in outcomes), [o.failure for o in outcomes]
    meta = store.require_meta()
    _record_outcomes(meta, outcomes)  # as `orchestrate bench` keeps them
    store.write_meta(meta)
    return runner


def _speed_requests(run: Path, target: str) -> list[dict[str, Any]]:
    folder = run / "samples" / target
    return [r for path in sorted(folder.glob(f"speed-*.{SETUP}.jsonl")) for r in read_records(path)]


async def test_the_tables_tpot_does_not_move_when_the_accuracy_pass_asks_logprobs(
    fake_url: Any, tmp_path: Path, data_dir: Path
) -> None:
    events: Events = []
    url, fake = await fake_url(paced("s", events))
    reports = {}
    for k in (0, 4):
        run = tmp_path / f"k{k}"
        m = _manifest(tmp_path, data_dir, {"bf16": url}, generation={"logprobs": k})
        await _bench(m, run, data_dir)
        reports[k] = Report.from_json(build_report(run))
        # The phase never asks for logprobs, whatever the accuracy pass asked.
        sent = [r["request"] for r in _speed_requests(run, "bf16")]
        assert sent and not any(r.get("logprobs") or r.get("top_logprobs") for r in sent)
    speed = [b for b in fake.requests if b.get("max_tokens") == SPEED_TOKENS]
    assert speed and not any(b.get("logprobs") for b in speed)
    assert any(b.get("logprobs") for b in fake.requests if b.get("max_tokens") != SPEED_TOKENS)
    plain, asked = (reports[k].rows[0] for k in (0, 4))
    # The accuracy pass's timings say what it asked: 15x slower tokens with logprobs...
    assert asked.speed.tpot_p50_ms is not None and plain.speed.tpot_p50_ms is not None
    assert asked.speed.tpot_p50_ms > 4 * plain.speed.tpot_p50_ms
    assert (asked.speed.workload or {})["logprobs"] == 4 and (plain.speed.workload or {})["logprobs"] == 0
    # ...the table's (the speed phase's) do not.
    tpot = [r.speed_phase.main.tpot_p50_ms for r in (plain, asked) if r.speed_phase and r.speed_phase.main]
    assert len(tpot) == 2 and tpot[0] is not None and tpot[1] is not None
    assert 0.5 < tpot[1] / tpot[0] < 2.0
    # The speed phase's figures are the table's; the accuracy pass's stay off the Markdown.
    md = (tmp_path / "k4").joinpath("report.md")
    write_report(tmp_path / "k4")
    table = md.read_text().split("\n\n")[1]
    main = asked.speed_phase.main if asked.speed_phase else None
    assert main is not None and f"| {main.tpot_p50_ms:.1f} |" in table
    assert "evaluation workload (the accuracy pass)" not in md.read_text()
    assert "Speed under the evaluation workload" in (tmp_path / "k4" / "report.html").read_text()


async def test_phases_wait_for_every_accuracy_pass_and_run_one_at_a_time(
    fake_url: Any, tmp_path: Path, data_dir: Path
) -> None:
    events: Events = []
    urls = {}
    for name in ("bf16", "int4", "awq"):
        urls[name], _ = await fake_url(paced(name, events))
    m = _manifest(tmp_path, data_dir, urls, client={"targets_in_parallel": True}, run={"noise_floor": True})
    run = tmp_path / "run"
    await _bench(m, run, data_dir)
    accuracy_ends = [i for i, (_, kind, edge) in enumerate(events) if kind == "accuracy" and edge == "end"]
    speed = [(i, server, edge) for i, (server, kind, edge) in enumerate(events) if kind == "speed"]
    # Nothing of any accuracy pass (the noise floor's repeats included) overlaps any phase.
    assert speed and max(accuracy_ends) < speed[0][0]
    # One phase at a time: each server's phase requests form one block.
    order = [server for _, server, _ in speed]
    blocks = [s for k, s in enumerate(order) if k == 0 or order[k - 1] != s]
    assert sorted(blocks) == ["awq", "bf16", "int4"]
    # Noise-floor rows repeat their reference's server: no phase of their own.
    meta = RunStore(run).require_meta()
    assert {n for n, f in meta.servers.items() if f.speed_phase} == {"bf16", "int4", "awq"}
    report = Report.from_json(build_report(run))
    repeats = [row for row in report.rows if row.noise_of]
    assert len(repeats) == 2 and all(row.speed_phase is None for row in repeats)
    # The same workload on every row: the same prompts in the same order, the same length asked.
    digests = {
        name: [(r["prompt_digest"], r["request"]["max_tokens"]) for r in _speed_requests(run, name)]
        for name in ("bf16", "int4", "awq")
    }
    assert digests["bf16"] == digests["int4"] == digests["awq"]
    assert len({d for d, _ in digests["bf16"]}) == len(digests["bf16"])  # unique prompts: no cache test
    levels = {row.target: [lv.workload for lv in row.speed_phase.levels] for row in report.rows if row.speed_phase}
    assert levels["bf16"] == levels["int4"] == levels["awq"] and len(levels["bf16"]) == 2
    ratios = next(row for row in report.rows if row.target == "int4").speed_vs_reference
    assert ratios is not None and ratios["tpot_p50_ms"] is not None


async def test_a_resumed_run_measures_only_the_missing_phase(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    events: Events = []
    url, fake = await fake_url(paced("s", events))
    run = tmp_path / "run"
    await _bench(_manifest(tmp_path, data_dir, {"bf16": url}, speed_phase={"enabled": False}), run, data_dir)
    assert len(fake.requests) == 16 and not _speed_requests(run, "bf16")
    write_report(run)
    assert NO_PHASE in (run / "report.md").read_text()
    # What is left: the phase alone (a Compose turn with only that left is brought up again).
    task = build_task("mmlu", data_dir, limit=16, shots=0)
    m = _manifest(tmp_path, data_dir, {"bf16": url})
    assert Runner(m, [task], RunStore(run)).pending("bf16") == 1
    assert Runner(m, [task], RunStore(run), speed_done=["bf16"]).pending("bf16") == 0
    # Resumed with the phase: every sample is answered, so only the phase is sent.
    await _bench(m, run, data_dir)
    sent = fake.requests[16:]
    assert sent and all(b["max_tokens"] == SPEED_TOKENS for b in sent)
    phase = RunStore(run).require_meta().server("bf16").speed_phase
    assert phase is not None and phase["status"] == "done"
    n = len(sent)
    assert n == len(_speed_requests(run, "bf16")) == (1 + 8 + 4) + (1 + 3 + 1)  # warm-up, measured, cool-down
    # Again, with that phase on record: nothing to send.
    await _bench(_manifest(tmp_path, data_dir, {"bf16": url}), run, data_dir, speed_done=("bf16",))
    assert len(fake.requests) == 16 + n


async def test_an_interrupted_phase_is_measured_again_from_its_start(
    fake_url: Any, tmp_path: Path, data_dir: Path
) -> None:
    events: Events = []
    url, _ = await fake_url(paced("s", events))
    run = tmp_path / "run"
    await _bench(_manifest(tmp_path, data_dir, {"bf16": url}), run, data_dir)
    full = len(_speed_requests(run, "bf16"))
    # What an interrupted phase leaves: part of its first level, nothing in run.json.
    path = RunStore(run).samples_path("bf16", "speed-c4", SETUP)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    meta = RunStore(run).require_meta()
    meta.servers["bf16"].speed_phase = None
    RunStore(run).write_meta(meta)
    await _bench(_manifest(tmp_path, data_dir, {"bf16": url}), run, data_dir)
    assert len(_speed_requests(run, "bf16")) == full  # replaced, not appended to
    row = Report.from_json(build_report(run)).rows[0]
    assert row.speed_phase is not None and row.speed_phase.main is not None and row.speed_phase.main.completed == 8


def test_an_old_run_renders_and_its_table_says_it_has_no_speed_phase(tmp_path: Path) -> None:
    run = tmp_path / "matrix"
    shutil.copytree(RUNS / "matrix" / "run", run)
    report = Report.from_json(write_report(run))
    assert all(row.speed_phase is None for row in report.rows)
    assert all(row.speed.requests > 0 for row in report.rows)  # the accuracy pass's timings are kept
    md = (run / "report.md").read_text()
    _head, _rule, *body = md.split("\n\n")[1].splitlines()
    assert all(line.count("| – |") >= 1 for line in body) and NO_PHASE in md


def _record(i: int, tokens: int, correct: bool, finish: str, server: bool) -> SampleRecord:
    timing = Timing(wall_send=100.0 + i, e2e=0.01 * tokens, ttft=0.005)
    st = ServerTiming(prompt_tokens=7, prompt_ms=2.0, predicted_tokens=tokens, predicted_ms=5.0 * tokens)
    return SampleRecord(
        id=f"t/{i}", task="t", target="x", gold="A", reply="A" * tokens, extracted="A", rule="r", correct=correct,
        attempts=1, completion_tokens=tokens, finish_reason=finish, timing=timing,
        server_timing=st if server else None,
    )  # fmt: skip


@pytest.mark.parametrize("server", [True, False])
def test_what_an_answer_costs_from_records_of_known_lengths(server: bool) -> None:
    rng = np.random.default_rng(7)
    tokens = rng.integers(1, 300, 50)
    right = rng.random(50) < 0.6
    cut = tokens >= 256
    records = [_record(i, int(n), bool(r), "length" if c else "stop", server) for i, (n, r, c) in
               enumerate(zip(tokens, right, cut, strict=True))]  # fmt: skip
    failed = SampleRecord(id="t/x", task="t", target="x", gold="A", error="HTTP 500", attempts=1)
    cost = answer_costs([*records, failed])
    assert cost is not None and cost["answers"] == 50 and cost["correct"] == int(right.sum())
    assert cost["mean_output_tokens"] == pytest.approx(tokens.mean())
    assert cost["p90_output_tokens"] == pytest.approx(np.percentile(tokens, 90))
    assert cost["cut_at_max_tokens"] == pytest.approx(cut.mean())
    assert cost["output_tokens_per_correct"] == pytest.approx(tokens.sum() / right.sum())
    seconds = (2.0 + 5.0 * tokens).sum() / 1000.0 if server else (0.01 * tokens).sum()
    assert cost["server_seconds_per_correct"] == pytest.approx(seconds / right.sum())
    assert cost["seconds_from"] == ("server" if server else "client")
    # A quantization that answers twice as long and right half as often.
    longer = [_record(i, 2 * int(n), bool(r) and i % 2 == 0, "stop", server) for i, (n, r) in
              enumerate(zip(tokens, right, strict=True))]  # fmt: skip
    other = answer_costs(longer)
    assert other is not None
    changes = _cost_changes({"t": other}, {"t": cost})
    assert changes is not None
    assert changes["t"]["mean_output_tokens"] == pytest.approx(2.0)
    ratio = (2 * tokens.sum() / other["correct"]) / (tokens.sum() / right.sum())
    assert changes["t"]["output_tokens_per_correct"] == pytest.approx(ratio)
    assert changes["t"]["cut_at_max_tokens"] == pytest.approx(-cut.mean())
    assert answer_costs([failed]) is None
