"""The CLI end to end against a scripted server: Ctrl-C / SIGTERM, error threshold, report, targets in parallel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.store import read_records
from tests.support.fake_openai import FakeOpenAI, answer_b
from tests.support.processes import default_sigint

REPO = Path(__file__).resolve().parents[1]


async def slow_b(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(0.2)
    return await answer_b(request, body)


async def start_fake(handler: Any) -> tuple[TestServer, FakeOpenAI]:
    fake = FakeOpenAI(handler)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    return server, fake


def write_manifest(tmp_path: Path, urls: list[str], data_dir: Path, **load: Any) -> Path:
    data = {
        "run": {"name": "cli", "output_dir": str(tmp_path / "runs"), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": 80, "shots": 0}},
        "client": {"concurrency": 4, "retries": 0, **load},
        "targets": [
            {"name": f"t{i}", "model": "M", "quantization": q, "backend": "openai", "url": u}
            for i, (u, q) in enumerate(zip(urls, ["BF16", "Int4"], strict=False))
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def bench(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.cli",
        "bench",
        *args,
        "--no-progress",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=default_sigint,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_interrupt_keeps_answered_drops_in_flight(tmp_path: Path, data_dir: Path, sig: signal.Signals) -> None:
    server, fake = await start_fake(slow_b)
    try:
        manifest = write_manifest(tmp_path, [str(server.make_url(""))], data_dir)
        proc = await bench(str(manifest), "--run-id", "r")
        samples = tmp_path / "runs" / "r" / "samples" / "t0" / "mmlu.qwen@2.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (samples.exists() and samples.read_text().count("\n") >= 8):  # noqa: ASYNC110 - polls a file another process writes
            await asyncio.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130, stderr.decode()[-2000:]
        assert b"Traceback" not in stderr
        records = list(read_records(samples))
        assert 8 <= len(records) < 80
        # Everything on disk is an answered sample; what was in flight was not written.
        assert all(r["error"] is None and r["reply"] == "B" for r in records)
        assert len(fake.requests) >= len(records)
        meta = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())
        assert meta["sessions"][-1]["status"] == "interrupted"

        resumed = await bench("--resume", str(tmp_path / "runs" / "r"))
        out, stderr = await asyncio.wait_for(resumed.communicate(), 120)
        assert resumed.returncode == 0, stderr.decode()[-2000:]
        ids = [r["id"] for r in read_records(samples)]
        assert len(ids) == len(set(ids)) == 80
        assert b"MMLU" in out
    finally:
        await server.close()


async def test_error_threshold_exit_3(tmp_path: Path, data_dir: Path) -> None:
    async def half_broken(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if len(body["messages"][-1]["content"]) % 2:
            return web.json_response({"error": "bad"}, status=422)
        return await answer_b(request, body)

    server, _ = await start_fake(half_broken)
    try:
        manifest = write_manifest(tmp_path, [str(server.make_url(""))], data_dir, error_threshold=0.05)
        proc = await bench(str(manifest), "--run-id", "r")
        _, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 3
        assert b"threshold 5%" in stderr and b"Traceback" not in stderr
        # The message counts every error record on disk, those of requests that ended after the
        # budget ran out included.
        said = re.search(rb"t0: (\d+) of (\d+) samples failed", stderr)
        assert said is not None, stderr.decode()
        records = list(read_records(tmp_path / "runs" / "r" / "samples" / "t0" / "mmlu.qwen@2.jsonl"))
        assert int(said.group(1)) == sum(r["error"] is not None for r in records)
    finally:
        await server.close()


@pytest.mark.slow
async def test_targets_in_parallel_and_report_command(tmp_path: Path, data_dir: Path) -> None:
    windows: dict[str, list[float]] = {"a": [], "b": []}

    def timed(key: str) -> Any:
        async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
            windows[key].append(time.monotonic())
            return await slow_b(request, body)

        return handler

    (sa, _), (sb, _) = await start_fake(timed("a")), await start_fake(timed("b"))
    try:
        manifest = write_manifest(
            tmp_path, [str(sa.make_url("")), str(sb.make_url(""))], data_dir, targets_in_parallel=True
        )
        proc = await bench(str(manifest), "--run-id", "r")
        _, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        # Both targets were served during the same period.
        assert min(windows["a"]) < max(windows["b"]) and min(windows["b"]) < max(windows["a"])
    finally:
        await sa.close()
        await sb.close()
    report = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "report", str(tmp_path / "runs" / "r"), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await report.communicate()
    assert report.returncode == 0
    text = out.decode()
    assert "BF16" in text and "Int4" in text and "(n=80)" in text
    rows = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())["rows"]
    assert rows[1]["reference"] == "t0" and rows[1]["delta_average"] == pytest.approx(0.0)


def _scoring_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in children if b"orchestrator.scoring" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _all_gone(pids: list[int], timeout: float) -> bool:
    """Poll until every pid has exited (gone, or a zombie left for init to reap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
async def test_terminal_signals_leave_no_traceback_or_leak_from_the_scoring_process(
    tmp_path: Path, data_dir: Path, sig: signal.Signals
) -> None:
    """Ctrl-C at a terminal reaches the whole foreground process group; kill -9 only the
    orchestrator. Either way IFEval's scoring process prints nothing and does not outlive it."""
    server, _ = await start_fake(slow_b)
    try:
        manifest = write_manifest(tmp_path, [str(server.make_url(""))], data_dir)
        data = yaml.safe_load(manifest.read_text())
        data["tasks"] = {"ifeval": {"limit": 60}}
        manifest.write_text(yaml.safe_dump(data))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.cli", "bench", str(manifest), "--run-id", "r", "--no-progress",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=default_sigint,
        )  # fmt: skip
        samples = tmp_path / "runs" / "r" / "samples" / "t0" / "ifeval.qwen@2.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (samples.exists() and samples.read_text().count("\n") >= 4):  # noqa: ASYNC110 - polls a file another process writes
            await asyncio.sleep(0.05)
        scorers = await asyncio.to_thread(_scoring_children, proc.pid)
        assert scorers, "no scoring process"
        os.killpg(proc.pid, sig)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == (130 if sig == signal.SIGINT else -9), stderr.decode()[-2000:]
        assert await asyncio.to_thread(_all_gone, scorers, 10.0), "the scoring process outlived the orchestrator"
        assert b"Traceback" not in stderr and b"leaked" not in stderr, stderr.decode()[-2000:]
    finally:
        await server.close()
