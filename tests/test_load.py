"""Load profiles against a scripted server with known delays: metrics, no coordinated omission, reports."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.loadrun import LoadRunner
from orchestrator.loadtest import LoadConfigError, LoadProfile, parse_slo, schedule
from orchestrator.manifest import parse_manifest
from orchestrator.report import write_load_report
from orchestrator.run_meta import ServerFacts
from orchestrator.store import RunStore
from tests.support.fake_openai import FakeOpenAI, chunk


def paced(ttft: float, itl: float) -> Any:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        n = body["max_tokens"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(ttft)
        for i in range(n):
            if i:
                await asyncio.sleep(itl)
            await resp.write(f"data: {json.dumps(chunk(' tok', 'length' if i == n - 1 else None))}\n\n".encode())
        usage = {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": n}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return resp

    return handler


async def run_load(
    tmp_path: Path,
    data_dir: Path,
    handler: Any,
    accuracy_concurrency: int = 16,
    quants: tuple[str, ...] = ("BF16",),
    gpus: tuple[str, ...] = (),
    **profile: Any,
) -> tuple[Path, Any, FakeOpenAI]:
    fake = FakeOpenAI(handler)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        m = parse_manifest(
            {
                "run": {"name": "load", "output_dir": str(tmp_path), "data_dir": str(data_dir)},
                "tasks": {"mmlu": {}},
                "client": {"concurrency": accuracy_concurrency},
                "targets": [
                    {
                        "name": "fake" if i == 0 else f"fake-{quant.lower()}",
                        "model": "M",
                        "quantization": quant,
                        "backend": "vllm",
                        "url": str(server.make_url("")).rstrip("/"),
                        "tokenizer": str(data_dir.parent / "data" / "qwen2-tokenizer"),
                        "gpus": list(gpus),
                    }
                    for i, quant in enumerate(quants)
                ],
            }
        )
        lp = LoadProfile(**profile)
        store = RunStore(tmp_path / "run")
        store.write_meta({"run_id": "run", "manifest": m.to_dict(), "load_profile": lp.to_dict()})
        runner = LoadRunner(m, lp, store, tokenizer_path=lambda t: None)
        results = await runner.run()
        meta = store.require_meta()  # as `orchestrate load` keeps them
        meta.servers = {name: ServerFacts.from_json(facts) for name, facts in runner.servers.items() if facts}
        meta.load_notes = runner.notes
        store.write_meta(meta)
        store.close()
    finally:
        await server.close()
    return tmp_path / "run", results, fake


@pytest.mark.slow
async def test_concurrency_levels_metrics(tmp_path: Path, data_dir: Path) -> None:
    run_dir, results, fake = await run_load(
        tmp_path, data_dir, paced(0.05, 0.005), levels=(1, 4), requests=48, warmup=2, output_tokens=16
    )
    assert [r.level for r in results] == [1, 4]
    assert fake.peak_in_flight == 4
    body = fake.requests[-1]
    assert body["ignore_eos"] is True and body["min_tokens"] == 16 and body["max_tokens"] == 16
    report = write_load_report(run_dir)
    levels = report["targets"]["fake"]
    for m in levels:
        assert m["completed"] == 48 and m["failed"] == 0 and m["mean_output_tokens"] == 16
        # Generous bounds: a busy 2-core CI machine delays the client, never below what was injected.
        assert 50 <= m["ttft_ms"]["p50"] < 50 * 3  # injected 50 ms
        assert 4.5 <= m["itl_ms"]["p50"] < 5 * 4  # injected 5 ms
        assert m["tpot_ms"]["p50"] == pytest.approx(m["itl_ms"]["p50"], rel=0.3)
        # Client-side time stays a small share of the ~130 ms E2E.
        assert m["queue_ms"]["p50"] < 0.2 * m["e2el_ms"]["p50"] and m["queue_ms"]["p99"] < m["e2el_ms"]["p99"]
        assert 0 <= m["post_ms"]["p50"] < 0.2 * m["e2el_ms"]["p50"] and m["post_ms"]["p99"] < m["e2el_ms"]["p99"]
    # Little's law: throughput x mean latency ~ concurrency for a closed loop (ramp-down tail: 48/51).
    c4 = levels[1]
    assert c4["request_throughput"] * c4["e2el_ms"]["mean"] / 1000 == pytest.approx(4, rel=0.1)
    for name in ("load_report.json", "load_report.csv", "load_report.html", "load_fake.png"):
        assert (run_dir / name).stat().st_size > 0
    assert "data:image/png;base64," in (run_dir / "load_report.html").read_text()


async def test_saturated_client_reports_queue_time_not_latency(tmp_path: Path, data_dir: Path) -> None:
    # 40 req/s scheduled, but only one request may be in flight and each takes ~60 ms: the client is
    # saturated. Latency must stay the server's; the wait shows as queue time (no coordinated omission).
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, paced(0.05, 0.001), mode="constant", levels=(40,), requests=20, warmup=0,
        output_tokens=8, max_concurrency=1,
    )  # fmt: skip
    [m] = write_load_report(run_dir)["targets"]["fake"]
    assert m["e2el_ms"]["p99"] < 0.5 * m["queue_ms"]["p99"]  # the wait shows as queue time, not latency
    assert m["queue_ms"]["p99"] > 500 and m["queue_ms"]["p50"] > 100
    assert m["dispatch_lag_ms"]["p99"] < 100  # the schedule itself kept time (50 ms gaps)
    assert m["request_throughput"] < 20  # what the server gave, not what was asked


async def test_poisson_schedule_and_goodput(tmp_path: Path, data_dir: Path) -> None:
    offsets = schedule("poisson", 20.0, 400, seed=1)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20, rel=0.15)
    assert schedule("constant", 4.0, 3, 0) == [0.0, 0.25, 0.5]
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, paced(0.03, 0.002), mode="poisson", levels=(20,), requests=20, warmup=0,
        output_tokens=8, slo={"ttft": 1000.0, "tpot": 0.5},
    )  # fmt: skip
    [m] = write_load_report(run_dir)["targets"]["fake"]
    assert m["goodput"]["fraction"] == 0.0  # tpot 0.5 ms is unreachable with 2 ms gaps
    assert m["dispatch_lag_ms"]["p50"] < 25  # half the 50 ms mean gap


def test_profile_and_slo_parsing() -> None:
    assert parse_slo("ttft=200ms, tpot=50ms,e2el=2s") == {"ttft": 200.0, "tpot": 50.0, "e2el": 2000.0}
    with pytest.raises(LoadConfigError):
        parse_slo("ttft<200")
    with pytest.raises(LoadConfigError):
        LoadProfile(mode="burst")
    with pytest.raises(LoadConfigError):
        LoadProfile(levels=(1.5,))
    with pytest.raises(LoadConfigError):
        LoadProfile(slo={"latency": 1.0})
    assert LoadProfile.from_dict(LoadProfile(levels=(2, 8)).to_dict()) == LoadProfile(levels=(2, 8))


def test_roofline_estimate(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from orchestrator.roofline import RooflineError, bandwidth, roofline, weight_bytes

    save_file({"a": np.zeros((30, 25), np.float32)}, str(tmp_path / "model-00001.safetensors"))
    save_file({"b": np.zeros((500,), np.float16)}, str(tmp_path / "model-00002.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(str(tmp_path)) == 4000  # the tensors' bytes, not the files' (headers are not read per token)
    with pytest.raises(RooflineError):
        weight_bytes(str(tmp_path / "config.json"))
    assert bandwidth("H100", None) == 3350.0 and bandwidth(None, 123.0) == 123.0
    with pytest.raises(RooflineError):
        bandwidth("tpu", None)
    r = roofline(weights=int(1e9), bandwidth_gbs=1000.0, tp=2, tpot_ms=1.0)
    assert r["bound_tok_s"] == pytest.approx(2000.0) and r["achieved_tok_s"] == pytest.approx(1000.0)
    assert r["fraction"] == pytest.approx(0.5)


@pytest.mark.slow
async def test_auto_sweep_duration_bound_and_task_prompts(tmp_path: Path, data_dir: Path) -> None:
    # auto: a closed-loop probe at the highest level finds the saturation rate, then rates up to it.
    run_dir, results, fake = await run_load(
        tmp_path, data_dir, paced(0.02, 0.001), mode="constant", levels=(8,), auto=True, requests=24, warmup=0,
        output_tokens=4,
    )  # fmt: skip
    assert [r.mode for r in results] == ["concurrency", "constant", "constant", "constant", "constant"]
    saturation = write_load_report(run_dir)["targets"]["fake"][0]["request_throughput"]
    assert [r.level for r in results[1:]] == [round(saturation * f, 3) for f in (0.25, 0.5, 0.75, 1.0)]
    # duration bounds a level: far fewer than the requested count are sent.
    run_dir, results, _ = await run_load(
        tmp_path / "d", data_dir, paced(0.02, 0.001), mode="constant", levels=(5,), requests=500, warmup=0,
        output_tokens=4, duration=1.0,
    )  # fmt: skip
    assert 3 <= len(results[0].records) <= 8
    # a benchmark's own prompts instead of synthetic ones.
    _, _, fake = await run_load(
        tmp_path / "t", data_dir, paced(0.0, 0.0), levels=(2,), requests=6, warmup=0, output_tokens=2, prompts="ceval"
    )
    # C-Eval's own prompts as the qwen setup renders them (Qwen's script: question, then the options).
    assert all(r["messages"][0]["content"] == "You are a helpful assistant." for r in fake.requests)
    assert all("\nD. " in r["messages"][-1]["content"] for r in fake.requests)


def fixed(latency: float, usage: bool = True) -> Any:
    """Every reply takes ``latency`` seconds: 4 tokens, usage (prompt 20 tokens) or none."""

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(latency)
        events = [chunk(" tok"), chunk(" tok"), chunk(" tok"), chunk(" tok", "length")]
        if usage:
            events.append({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 4}})
        await resp.write(b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n")
        return resp

    return handler


async def test_a_level_is_not_capped_by_the_accuracy_runs_concurrency(tmp_path: Path, data_dir: Path) -> None:
    run_dir, _, fake = await run_load(
        tmp_path, data_dir, fixed(0.1), accuracy_concurrency=4, levels=(12,), requests=36, warmup=0, output_tokens=4
    )
    assert fake.peak_in_flight == 12
    [m] = write_load_report(run_dir)["targets"]["fake"]
    assert m["queue_ms"]["p50"] < 0.3 * m["e2el_ms"]["p50"]  # no client-side queue behind a pool of 4


@pytest.mark.parametrize("usage", [True, False], ids=["usage", "tokenizer"])
async def test_total_token_throughput_counts_prompt_tokens(tmp_path: Path, data_dir: Path, usage: bool) -> None:
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, fixed(0.02, usage), levels=(2,), requests=20, warmup=0, output_tokens=4, input_tokens=32
    )
    [m] = write_load_report(run_dir)["targets"]["fake"]
    prompt = 20 if usage else None
    if prompt is None:  # no usage: the model's tokenizer counted each templated prompt
        records = [json.loads(line) for line in (run_dir / "samples" / "fake").glob("*.jsonl").__next__().open()]
        prompt = records[0]["prompt_token_counts"]["tokenizer"]
        assert prompt >= 32
    ratio = m["total_token_throughput"] / m["output_throughput"]
    assert ratio == pytest.approx((m["mean_output_tokens"] + prompt) / m["mean_output_tokens"], rel=0.05)


async def test_rate_window_excludes_the_drain(tmp_path: Path, data_dir: Path) -> None:
    # 20 req/s for 2 s against 0.3 s replies: the server keeps up, so 20 req/s is the reading
    # (counting the 0.3 s drain after the last send would say 18.5).
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, fixed(0.3), mode="constant", levels=(20,), requests=40, warmup=0, output_tokens=4
    )
    [m] = write_load_report(run_dir)["targets"]["fake"]
    assert m["request_throughput"] == pytest.approx(20, rel=0.05)


async def test_nothing_is_sent_after_the_levels_deadline(tmp_path: Path, data_dir: Path) -> None:
    # 50 req/s asked, one in flight at a time, 0.2 s each: most requests wait for a slot past the
    # 1 s deadline; those are not sent.
    _run_dir, results, _ = await run_load(
        tmp_path, data_dir, fixed(0.2), mode="constant", levels=(50,), requests=50, warmup=0, output_tokens=4,
        max_concurrency=1, duration=1.0,
    )  # fmt: skip
    sends = [r.timing.wall_send for r in results[0].records if r.timing is not None]
    assert 3 <= len(sends) <= 7
    assert max(sends) - min(sends) <= 1.0


async def test_a_level_shorter_than_its_requests_is_one_wave(tmp_path: Path, data_dir: Path) -> None:
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, fixed(0.6), levels=(4,), requests=4, warmup=0, output_tokens=4, duration=0.3
    )
    [m] = write_load_report(run_dir)["targets"]["fake"]
    assert m["one_wave"] is True


async def test_load_report_compares_the_quantizations_of_a_model(tmp_path: Path, data_dir: Path) -> None:
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, paced(0.01, 0.001), quants=("BF16", "Q4_K_M"), levels=(1, 2), requests=6, warmup=0,
        output_tokens=4,
    )  # fmt: skip
    report = write_load_report(run_dir)
    assert report["models"] == {"M": [("fake", "BF16"), ("fake-q4_k_m", "Q4_K_M")]}
    assert (run_dir / "load_model_0.png").stat().st_size > 0
    page = (run_dir / "load_report.html").read_text()
    assert "M: its quantizations" in page and page.count("data:image/png;base64,") == 3  # 2 targets + the model


async def test_the_load_report_shows_the_percentiles_asked_and_keeps_the_median(tmp_path: Path, data_dir: Path) -> None:
    """--percentiles 90,99.9: the page and the table show those; the median every reader of a
    level needs (who set the pace, the roofline, the curves) is there whatever was asked."""
    from rich.console import Console

    from orchestrator.report import render_latency_table

    run_dir, _, _ = await run_load(
        tmp_path, data_dir, paced(0.02, 0.002), levels=(1,), requests=8, warmup=0, output_tokens=4,
        percentiles=(90.0, 99.9),
    )  # fmt: skip
    report = write_load_report(run_dir)
    [m] = report["targets"]["fake"]
    assert set(m["ttft_ms"]) == {"mean", "p50", "p90", "p99.9"}
    assert m["saturation"] is not None and m["saturation"]["e2e_ms"] == m["e2el_ms"]["p50"]
    page = (run_dir / "load_report.html").read_text()
    assert "ttft_ms p90/p99.9" in page and "p50/p90/p99" not in page
    console = Console(width=250, record=True)
    console.print(render_latency_table(report))
    assert "p90/p99.9" in console.export_text()


async def test_each_level_has_its_energy_and_each_target_its_memory(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from orchestrator.report import render_latency_table
    from orchestrator.report.load import footprint_lines
    from tests.support.fake_nvml import FakeGpu, FakeNvml

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu("GPU-x", watts=250.0, used=6 << 30)]))
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, paced(0.01, 0.002), gpus=("GPU-x",), levels=(1, 2), requests=6, warmup=1, output_tokens=4
    )  # fmt: skip
    report = write_load_report(run_dir)
    for m in report["targets"]["fake"]:
        e = m["energy"]
        assert e["valid"] and e["joules"] == pytest.approx(250.0 * e["seconds"], rel=1e-3, abs=0.01)
        # Every request of the level (warm-up and cool-down too) against the energy of its whole window.
        assert e["output_tokens"] == 4 * e["requests"] and e["requests"] == 6 + 1 + int(m["level"]) * (
            m["mode"] == "concurrency"
        )
        assert e["j_per_token"] == pytest.approx(e["joules"] / e["output_tokens"], rel=1e-3)
    [line] = footprint_lines(report)
    assert "memory peak 6.44 GB" in line and "GPU-x" not in line
    console = Console(width=250, record=True)
    console.print(render_latency_table(report))
    assert "J/token" in console.export_text()
    assert "J/token" in (run_dir / "load_report.html").read_text()


async def test_a_new_latency_metric_is_one_entry(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry in metrics.LATENCIES (here: time from the first token to the last) reaches the
    level's figures, the latency table and the page, with nothing else edited."""
    from rich.console import Console

    from orchestrator.metrics import LATENCIES, Latency
    from orchestrator.report import render_latency_table

    def decode(r: Any) -> list[float]:
        return [] if r.ttft is None or r.e2e is None else [(r.e2e - r.ttft) * 1000.0]

    monkeypatch.setitem(LATENCIES, "decode_ms", Latency("decode_ms", "decode", decode))
    run_dir, _, _ = await run_load(
        tmp_path, data_dir, paced(0.02, 0.002), levels=(1,), requests=6, warmup=0, output_tokens=4
    )
    report = write_load_report(run_dir)
    [m] = report["targets"]["fake"]
    assert m["decode_ms"]["p50"] == pytest.approx(m["e2el_ms"]["p50"] - m["ttft_ms"]["p50"], abs=5.0)
    console = Console(width=300, record=True)
    console.print(render_latency_table(report))
    assert (
        "DECODE ms" in console.export_text() and "decode_ms p50/p90/p99" in (run_dir / "load_report.html").read_text()
    )
