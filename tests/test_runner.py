"""Runner against a scripted server: bounded concurrency, retries, error records, error budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator.manifest import Manifest, parse_manifest
from orchestrator.report import build_report
from orchestrator.runner import Runner
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from orchestrator.tasks.ifeval.task import IFEvalTask
from tests.support.fake_openai import Handler, answer_b, chunk, sse


def manifest(url: str, tmp_path: Path, **load: Any) -> Manifest:
    return parse_manifest(
        {
            "run": {"name": "t", "output_dir": str(tmp_path)},
            "tasks": {"mmlu": {"limit": 60, "shots": 0}},
            "client": {"concurrency": 4, "retries": 2, **load},
            # The accuracy pass's requests are counted here: no speed phase after it.
            "speed_phase": {"enabled": False},
            "targets": [{"name": "fake", "model": "M", "quantization": "BF16", "backend": "openai", "url": url}],
        }
    )


async def run(m: Manifest, tmp_path: Path, data_dir: Path) -> tuple[Runner, RunStore, Any]:
    store = RunStore(tmp_path / "run")
    store.write_meta({"run_id": "run", "manifest": m.to_dict()})
    runner = Runner(m, [build_task("mmlu", data_dir, limit=60, shots=0)], store, retry_wait_max=0.01)
    outcomes = await runner.run()
    store.close()
    return runner, store, outcomes


async def test_bounded_concurrency_and_complete_records(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    url, fake = await fake_url(answer_b)
    _, store, outcomes = await run(manifest(url, tmp_path), tmp_path, data_dir)
    assert outcomes[0].failure is None and outcomes[0].sent == 60
    assert fake.peak_in_flight == 4  # never more in flight than the concurrency
    records = store.records("fake", "mmlu", "qwen@2")
    assert len(records) == 60
    for r in records:
        # OpenCompass's cushion pattern ([ABCD]) reads the lone letter.
        assert r.extracted == "B" and r.rule == "opencompass_pattern_41" and r.correct == (r.gold == "B")
        assert r.attempts == 1 and r.error is None and r.token_source == "usage"
    report = build_report(tmp_path / "run")
    expected = sum(r.gold == "B" for r in records) / 60
    assert report["rows"][0]["tasks"]["mmlu"]["accuracy"] == pytest.approx(expected)


async def test_transient_errors_are_retried(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    calls: dict[str, int] = {}

    async def flaky(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        key = body["messages"][-1]["content"]
        calls[key] = calls.get(key, 0) + 1
        if calls[key] == 1:
            return web.json_response({"error": "busy"}, status=503 if len(calls) % 2 else 429)
        return await answer_b(request, body)

    url, _ = await fake_url(flaky)
    _, store, outcomes = await run(manifest(url, tmp_path), tmp_path, data_dir)
    assert outcomes[0].errors == 0
    assert all(r.attempts == 2 and r.error is None for r in store.records("fake", "mmlu", "qwen@2"))


async def test_fatal_errors_are_recorded_not_scored(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    async def picky(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if "abstract algebra" in body["messages"][-1]["content"]:
            return web.json_response({"error": "context too long"}, status=400)
        return await answer_b(request, body)

    url, _ = await fake_url(picky)
    _, store, _ = await run(manifest(url, tmp_path, error_threshold=0.5), tmp_path, data_dir)
    failed = [r for r in store.records("fake", "mmlu", "qwen@2") if r.error]
    assert failed and all(r.subject == "abstract_algebra" for r in failed)
    for r in failed:
        assert r.attempts == 1 and r.status == 400 and r.error_kind == "fatal"
        assert r.correct is None and r.reply is None  # an error, never a wrong answer
    agg = build_report(tmp_path / "run")["rows"][0]["tasks"]["mmlu"]
    assert agg["errors"] == len(failed) and agg["n"] == 60 - len(failed)
    # Errored samples are sent again on resume.
    assert len(store.completed_ids("fake", "mmlu", "qwen@2")) == 60 - len(failed)


async def test_error_budget_stops_the_target(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    async def down(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": "internal"}, status=500)

    url, fake = await fake_url(down)
    _, _, outcomes = await run(manifest(url, tmp_path, error_threshold=0.05), tmp_path, data_dir)
    assert outcomes[0].failure is not None and "threshold 5%" in outcomes[0].failure
    assert len(fake.requests) < 60  # stopped early instead of hammering a broken server


async def test_resume_sends_only_missing(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    url, fake = await fake_url(answer_b)
    m = manifest(url, tmp_path)
    await run(m, tmp_path, data_dir)
    assert len(fake.requests) == 60
    path = RunStore(tmp_path / "run").samples_path("fake", "mmlu", "qwen@2")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:45]) + lines[45][:50])  # 15 lost, one of them a torn line
    await run(m, tmp_path, data_dir)
    assert len(fake.requests) == 75
    ids = [r.id for r in RunStore(tmp_path / "run").records("fake", "mmlu", "qwen@2")]
    assert len(ids) == len(set(ids)) == 60


async def test_stream_keeps_going_without_done(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    async def no_done(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [{"choices": [{"delta": {"content": "A"}, "finish_reason": "stop"}]}], done=False)

    url, _ = await fake_url(no_done)
    _, store, outcomes = await run(manifest(url, tmp_path), tmp_path, data_dir)
    assert outcomes[0].errors == 0
    assert {r.extracted for r in store.records("fake", "mmlu", "qwen@2")} == {"A"}


async def test_rescore_run_without_server(fake_url: Any, tmp_path: Path, data_dir: Path) -> None:
    import json

    from orchestrator.cli import main

    url, _ = await fake_url(answer_b)
    m = manifest(url, tmp_path)
    store = RunStore(tmp_path / "run")
    store.write_meta({"run_id": "run", "manifest": m.to_dict(), "data_dir": str(data_dir)})
    await Runner(m, [build_task("mmlu", data_dir, limit=60, shots=0)], store, retry_wait_max=0.01).run()
    store.close()
    path = store.samples_path("fake", "mmlu", "qwen@2")
    original = path.read_text()
    # A scorer bug stored wrong verdicts: re-scoring from the raw replies puts them right.
    tampered = [json.loads(line) | {"correct": True, "rule": "bogus"} for line in original.splitlines()]
    path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in tampered))
    assert main(["score", str(tmp_path / "run")]) == 0
    assert [json.loads(x) for x in path.read_text().splitlines()] == [json.loads(x) for x in original.splitlines()]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["rows"][0]["tasks"]["mmlu"]["n"] == 60
    # A record whose prompt no longer matches the data is refused, not silently re-scored.
    broken = [json.loads(line) for line in original.splitlines()]
    broken[0]["prompt_digest"] = "0" * 16
    path.write_text("".join(json.dumps(r) + "\n" for r in broken))
    assert main(["score", str(tmp_path / "run")]) == 2
    assert main(["score", str(tmp_path / "nowhere")]) == 2


def ifeval_run(
    url: str, tmp_path: Path, data_dir: Path, concurrency: int, reply: str
) -> tuple[Manifest, RunStore, Any, dict[str, Any]]:
    """An IFEval run of 40 prompts against ``url``, and the verdicts ``reply`` gets in-process."""
    m = parse_manifest(
        {
            "run": {"name": "t", "output_dir": str(tmp_path)},
            "tasks": {"ifeval": {"limit": 40}},
            "client": {"concurrency": concurrency, "retries": 0},
            "targets": [{"name": "fake", "model": "M", "quantization": "BF16", "backend": "openai", "url": url}],
        }
    )
    store = RunStore(tmp_path / "run")
    store.write_meta({"run_id": "run", "manifest": m.to_dict()})
    task = build_task("ifeval", data_dir, limit=40)
    return m, store, task, {s.id: task.score(s, reply).details for s in task.samples()}


async def test_ifeval_scored_in_its_own_process(
    fake_url: Any, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "Das ist eine kurze Antwort auf Deutsch. Es gibt keine Kommas hier."

    async def polite(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [{"choices": [{"delta": {"content": text}, "finish_reason": "stop"}]}])

    url, _ = await fake_url(polite)
    m, store, task, expected = ifeval_run(url, tmp_path, data_dir, 8, text)

    def not_here(*args: Any) -> Any:
        raise AssertionError("IFEval scored in the process that times the requests")

    # Checkers would take the GIL from the event loop; they run in the runner's scoring process.
    monkeypatch.setattr(IFEvalTask, "score_response", not_here)
    outcomes = await Runner(m, [task], store).run()
    store.close()
    assert outcomes[0].errors == 0
    records = store.records("fake", "ifeval", "qwen@2")
    assert len(records) == 40
    assert {r.id: r.score_details for r in records} == expected  # the same verdicts as here
    for r in records:
        d = r.score_details
        assert len(d["strict"]) == len(d["loose"]) == len(d["instruction_id_list"])
        assert r.correct == all(d["strict"]) and r.rule == "ifeval"
    no_comma = [r for r in records if r.score_details["instruction_id_list"] == ["punctuation:no_comma"]]
    assert all(r.correct for r in no_comma)
    report = build_report(tmp_path / "run")["rows"][0]["tasks"]["ifeval"]
    assert report["n"] == 40 and report["prompt_loose"] >= report["prompt_strict"]


async def test_a_scoring_process_killed_from_outside_loses_no_answer(
    fake_url: Any, tmp_path: Path, data_dir: Path
) -> None:
    """The OOM killer takes the scoring process mid-run: the rest is scored in the main process."""
    import os
    import signal as sig

    text = "Das ist eine kurze Antwort auf Deutsch. Es gibt keine Kommas hier."
    runner_box: list[Runner] = []
    answered = 0

    async def polite(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        nonlocal answered
        answered += 1
        runtime = runner_box[0].runtime
        scoring = None if runtime is None else runtime.scoring
        if answered == 10 and scoring is not None and scoring._proc is not None:
            os.kill(scoring._proc.pid, sig.SIGKILL)
        return await sse(request, [{"choices": [{"delta": {"content": text}, "finish_reason": "stop"}]}])

    url, _ = await fake_url(polite)
    m, store, task, expected = ifeval_run(url, tmp_path, data_dir, 4, text)
    runner = Runner(m, [task], store)
    runner_box.append(runner)
    outcomes = await runner.run()
    store.close()
    assert outcomes[0].errors == 0 and outcomes[0].failure is None
    records = store.records("fake", "ifeval", "qwen@2")
    assert len(records) == 40 and all(r.error is None for r in records)
    assert {r.id: r.score_details for r in records} == expected  # the same verdicts either way
    assert any("scoring process died" in n for n in runner.notes)


def _with_logprobs(cap: int) -> Handler:
    """Answers "B" with the OpenAI chat logprobs of it, at most ``cap`` alternatives (a server's limit)."""

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        final = chunk("B", "stop")
        if body.get("logprobs"):
            k = min(body["top_logprobs"], cap)
            top = [{"token": t, "logprob": lp} for t, lp in [("B", -0.2), ("A", -1.9), ("C", -3.0), ("D", -4.0)][:k]]
            final["choices"][0]["logprobs"] = {"content": [{"token": "B", "logprob": -0.2, "top_logprobs": top}]}
        usage = {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1},
        }
        return await sse(request, [chunk(role=True, content=""), final, usage])

    return handler


@pytest.mark.parametrize(("asked", "cap"), [(3, 4), (4, 2)])
async def test_logprobs_are_asked_stored_per_sample_and_capped_at_start(
    fake_url: Any, tmp_path: Path, data_dir: Path, asked: int, cap: int
) -> None:
    url, fake = await fake_url(_with_logprobs(cap))
    m = manifest(url, tmp_path)
    m = dataclasses.replace(m, generation=dataclasses.replace(m.generation, logprobs=asked))
    runner, store, outcomes = await run(m, tmp_path, data_dir)
    got = min(asked, cap)
    assert outcomes[0].server["logprobs"] == {"asked": asked, "got": got}
    assert (f"gives top-{got} logprobs, not the top-{asked} asked for" in " ".join(runner.notes)) == (cap < asked)
    # Every sample asked for what the server gives (the probe found it), greedy as ever.
    sent = fake.requests[1:]  # after the probe
    assert len(sent) == 60 and all(b["top_logprobs"] == got and b["temperature"] == 0.0 for b in sent)
    records = store.records("fake", "mmlu", "qwen@2")
    assert all(r.logprobs == [["B", -0.2, [[t, lp] for t, lp in [("B", -0.2), ("A", -1.9), ("C", -3.0)][:got]]]]
               for r in records)  # fmt: skip
