"""Fault injection: a reply that never arrived whole is an error record, never a scored answer.

Every mode of tests/support/fault_server.py, streaming and not, through the OpenAI and the TGI
adapters. For each: every sample ends as a scored reply or an error record, no error record is
scored, the accuracy of what was answered is what the server's rule predicts ("B" always),
retries stay within the budget, and a transient fault that clears is retried into an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from orchestrator.manifest import parse_manifest
from orchestrator.records import SampleRecord
from orchestrator.runner import Runner, TargetOutcome
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from tests.support.fault_server import ANSWER, MODES, FaultServer

PROTOCOLS = [("openai", True), ("openai", False), ("tgi", True), ("tgi", False)]
FATAL_KINDS = {"bad_shape", "server_error"}


def expected_kinds(mode: str, backend: str, stream: bool) -> set[str]:
    """What the client must call a persistent fault of this mode ("" = the mode is no fault here)."""
    if mode == "trickle":
        return {""}
    if not stream:
        if mode in ("no_data", "reset_mid"):
            return {""}  # stream-only faults
        if mode == "truncated":
            return {"connection", "malformed"}  # a body cut short of its Content-Length
        if mode == "no_choices" and backend == "tgi":
            return {"bad_shape"}
    if mode == "reset_mid":
        return {"connection", "truncated"}  # a chunked body cut: aiohttp may see an error or an end
    if backend == "tgi" and mode == "no_choices":
        return {"truncated"}
    return {MODES[mode]}


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(fault: FaultServer) -> str:
        server = TestServer(fault.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for s in servers:
        await s.close()


async def run_against(
    url: str, backend: str, stream: bool, tmp_path: Path, data_dir: Path, limit: int = 24, **load: Any
) -> tuple[list[SampleRecord], TargetOutcome]:
    target: dict[str, Any] = {"name": "t", "model": "M", "quantization": "BF16", "backend": backend, "url": url}
    if backend == "tgi":
        target["tokenizer"] = str(data_dir / "qwen2-tokenizer")
    m = parse_manifest(
        {
            "run": {"name": "faults", "output_dir": str(tmp_path)},
            "tasks": {"mmlu": {"limit": limit, "shots": 0}},
            "generation": {"stream": stream},
            "client": {"concurrency": 8, "retries": 2, "request_timeout": 1.0, "error_threshold": 1.0, **load},
            "speed_phase": {"enabled": False},  # the faults' hits count the accuracy pass's requests
            "targets": [target],
        }
    )
    store = RunStore(tmp_path / "run")
    store.write_meta({"run_id": "run", "manifest": m.to_dict()})
    runner = Runner(m, [build_task("mmlu", data_dir, limit=limit, shots=0)], store, retry_wait_max=0.01)
    outcomes = await runner.run()
    store.close()
    return store.records("t", "mmlu", "qwen@2"), outcomes[0]


def assert_trustworthy(records: list[SampleRecord], n: int) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """Every sample once; errors unscored; answers whole and scored by the server's rule."""
    assert len(records) == n and len({r.id for r in records}) == n
    errors = [r for r in records if r.error is not None]
    answered = [r for r in records if r.error is None]
    for r in errors:
        assert r.correct is None and r.extracted is None and r.reply is None, r
        assert r.error_type, r
    for r in answered:
        assert r.reply == ANSWER, r  # nothing partial passed as a reply
        assert r.correct == (r.gold == ANSWER)
    if answered:
        accuracy = sum(r.correct for r in answered) / len(answered)
        assert accuracy == sum(r.gold == ANSWER for r in answered) / len(answered)
    return answered, errors


@pytest.mark.parametrize(("backend", "stream"), PROTOCOLS, ids=[f"{b}-{'sse' if s else 'json'}" for b, s in PROTOCOLS])
@pytest.mark.parametrize("mode", sorted(MODES))
async def test_a_fault_that_clears_is_retried_into_an_answer(
    serve: Any, tmp_path: Path, data_dir: Path, mode: str, backend: str, stream: bool
) -> None:
    fault = FaultServer(mode, rate=0.5, fail_attempts=1, stall_s=3.0)
    records, outcome = await run_against(await serve(fault), backend, stream, tmp_path, data_dir)
    _answered, errors = assert_trustworthy(records, 24)
    kinds = expected_kinds(mode, backend, stream)
    hit = fault.hit
    if kinds == {""}:
        assert not errors and all(r.attempts == 1 for r in records)
        return
    assert fault.faults[mode] > 0, "the fault never fired"
    if kinds <= FATAL_KINDS:  # retrying cannot help: recorded at once
        assert len(errors) == fault.faults[mode] and all(r.attempts == 1 for r in errors)
        assert {r.error_type for r in errors} <= kinds
        return
    assert not errors, errors[:2]
    assert len(hit) == fault.faults[mode]  # each faulted prompt was sent exactly once more
    assert sorted(r.attempts for r in records).count(2) == len(hit)
    assert outcome.errors == 0


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "stream"), PROTOCOLS, ids=[f"{b}-{'sse' if s else 'json'}" for b, s in PROTOCOLS])
@pytest.mark.parametrize("mode", sorted(m for m in MODES if m != "trickle"))
async def test_a_persistent_fault_is_an_error_record_of_its_kind(
    serve: Any, tmp_path: Path, data_dir: Path, mode: str, backend: str, stream: bool
) -> None:
    kinds = expected_kinds(mode, backend, stream)
    if kinds == {""}:
        pytest.skip(f"{mode} is a streaming fault")
    fault = FaultServer(mode, rate=0.4, fail_attempts=99, stall_s=3.0)
    records, outcome = await run_against(await serve(fault), backend, stream, tmp_path, data_dir, retries=2)
    _answered, errors = assert_trustworthy(records, 24)
    assert errors and len(errors) == len(fault.hit)  # every faulted prompt, and only those
    assert {r.error_type for r in errors} <= kinds, {r.error_type for r in errors}
    transient = not kinds <= FATAL_KINDS
    for r in errors:
        # Retries within budget: the first attempt plus `retries` more for what retrying may fix
        # (and, counted in attempts too, at most one at-once resend per attempt after a kept-alive
        # connection turned out closed).
        assert r.attempts - r.resends == (3 if transient else 1), r
        assert r.resends <= r.attempts // 2
        assert r.error_kind == ("transient" if transient else "fatal")
    assert sum(fault.attempts.values()) == sum(r.attempts for r in records)
    assert outcome.errors == len(errors)


@pytest.mark.parametrize("value", ["1", "date:2"], ids=["seconds", "http-date"])
async def test_retry_after_is_honoured(serve: Any, tmp_path: Path, data_dir: Path, value: str) -> None:
    fault = FaultServer("429", rate=1.0, fail_attempts=1, retry_after=value)
    records, _ = await run_against(await serve(fault), "openai", True, tmp_path, data_dir, limit=4)
    assert_trustworthy(records, 4)
    # An HTTP-date has whole seconds: "2 s ahead" is 1 to 2 s away when the client reads it.
    asked = 1.0
    for times in fault.arrivals.values():
        assert len(times) == 2
        assert times[1] - times[0] >= asked * 0.95, times


async def test_retry_after_is_capped_by_the_request_timeout(serve: Any, tmp_path: Path, data_dir: Path) -> None:
    fault = FaultServer("429", rate=1.0, fail_attempts=1, retry_after="3600")
    started = time.monotonic()
    records, _ = await run_against(await serve(fault), "openai", True, tmp_path, data_dir, limit=2)
    assert_trustworthy(records, 2)
    assert time.monotonic() - started < 60  # the 1 s request timeout, not an hour


@pytest.mark.slow
async def test_the_retry_window_outlasts_a_server_restart(tmp_path: Path, data_dir: Path) -> None:
    """The server goes away for a while (connections refused) and comes back on the same port."""
    fault = FaultServer("trickle", rate=0.0, notify_at=10)
    server = TestServer(fault.app(), host="127.0.0.1")
    await server.start_server()
    port = server.port
    url = str(server.make_url("")).rstrip("/")
    target = {"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "url": url}
    m = parse_manifest(
        {
            "run": {"name": "outage", "output_dir": str(tmp_path)},
            "tasks": {"mmlu": {"limit": 40, "shots": 0}},
            "client": {"concurrency": 4, "request_timeout": 5.0},  # default retries and backoff
            "targets": [target],
        }
    )
    store = RunStore(tmp_path / "run")
    store.write_meta({"run_id": "run", "manifest": m.to_dict()})
    runner = Runner(m, [build_task("mmlu", data_dir, limit=40, shots=0)], store)

    async def outage() -> None:
        await fault.reached.wait()
        await server.close()  # down: connections refused
        await asyncio.sleep(3.0)  # the outage being simulated, not a synchronisation
        again = TestServer(fault.app(), host="127.0.0.1", port=port)
        await again.start_server()
        holder.append(again)

    holder: list[TestServer] = []
    outcomes, _ = await asyncio.gather(runner.run(), outage())
    store.close()
    for s in holder:
        await s.close()
    records = store.records("t", "mmlu", "qwen@2")
    _answered, errors = assert_trustworthy(records, 40)
    assert not errors and outcomes[0].errors == 0
    assert max(r.attempts for r in records) > 1  # the outage was felt, and outlasted


async def test_mixed_fault_soak(serve: Any, tmp_path: Path, data_dir: Path) -> None:
    """A few thousand requests with every fault at once, bounded in time."""
    fault = FaultServer("mixed", rate=0.3, fail_attempts=1, stall_s=2.0)
    url = await serve(fault)
    started = time.monotonic()
    records, outcome = await asyncio.wait_for(
        run_against(url, "openai", True, tmp_path, data_dir, limit=2000, concurrency=64), timeout=600
    )
    _answered, errors = assert_trustworthy(records, 2000)
    assert len(fault.faults) >= len(MODES) - 1  # every fault fired (trickle is no fault)
    assert not errors and outcome.errors == 0
    assert sum(fault.attempts.values()) == sum(r.attempts for r in records)
    assert time.monotonic() - started < 600
