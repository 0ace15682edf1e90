"""Size, memory and energy against known truth: a fake NVML (tests/support/fake_nvml.py) whose
GPUs draw known power on a clock the test moves, with processes, a missing driver, a counter that
resets and power readings that fail for a while; weights from GGUF and safetensors files written
here with known tensors; the report's division of energy by work."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator import weights as weights_mod
from orchestrator.footprint import (
    MIN_COVERAGE,
    EnergyWindow,
    Footprint,
    Memory,
    MemoryReading,
    energy_figure,
    gpu_energy,
    merge,
    row_figures,
    shared_windows,
)
from orchestrator.meter import Meter
from orchestrator.nvml import open_nvml
from orchestrator.report import build_report, render_markdown, write_report
from orchestrator.report.model import Report
from orchestrator.weights import folder_size, gguf_size, hub_size, matrix_estimate
from tests.support.fake_nvml import Clock, FakeGpu, FakeNvml

INTERVAL = 0.1


def _sampled(nv: FakeNvml, gpu: FakeGpu, t0: float, t1: float, rng: random.Random) -> list[tuple[float, float | None]]:
    """Power samples every INTERVAL with jitter, as the meter's thread takes them."""
    out, t = [], t0 + rng.uniform(0, INTERVAL)
    while t < t1:
        out.append((t, nv.power_w(gpu, t) * 1000))
        t += INTERVAL * rng.uniform(0.8, 1.2)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_counter_energy_is_the_truth_and_the_samples_agree(seed: int) -> None:
    rng = random.Random(seed)
    base, swing, period = rng.uniform(80, 600), rng.uniform(0, 300), rng.uniform(0.5, 5)
    gpu = FakeGpu("GPU-a", watts_at=lambda t: base + swing * (1 + np.sin(2 * np.pi * t / period)) / 2)
    clock = Clock(0.0)
    nv = FakeNvml([gpu], clock)
    t0, t1 = rng.uniform(1, 5), rng.uniform(12, 60)
    e = gpu_energy(
        t0, t1, int(nv.energy_mj(gpu, t0)), int(nv.energy_mj(gpu, t1)), _sampled(nv, gpu, t0, t1, rng), INTERVAL
    )
    truth = nv.joules(gpu, t0, t1)
    assert e.source == "energy counter" and e.why is None
    assert e.joules == pytest.approx(
        truth, rel=1e-5
    )  # the counter (millijoule steps; the truth integrated numerically)
    assert e.power_joules == pytest.approx(truth, rel=0.03)
    assert e.coverage == 1.0


def test_a_gap_in_the_samples_flags_the_window_but_keeps_its_figure() -> None:
    gpu = FakeGpu("GPU-a", watts=300)
    nv = FakeNvml([gpu], Clock(0.0))
    t0, t1 = 10.0, 30.0
    samples = [(t, p) for t, p in _sampled(nv, gpu, t0, t1, random.Random(1)) if not 15 <= t < 22]  # 7 s lost
    e = gpu_energy(t0, t1, int(nv.energy_mj(gpu, t0)), int(nv.energy_mj(gpu, t1)), samples, INTERVAL)
    assert e.coverage == pytest.approx(1 - 7 / 20, abs=0.02) and e.coverage < MIN_COVERAGE
    assert e.why is not None and "cover" in e.why
    assert e.joules == pytest.approx(300 * 20, abs=0.01)  # computed, for the record; the window is flagged
    assert e.max_gap_s == pytest.approx(7, abs=0.15)


def test_short_failed_reads_inside_the_limit_are_covered() -> None:
    gpu = FakeGpu("GPU-a", watts=200)
    nv = FakeNvml([gpu], Clock(0.0))
    samples = [(t, None if i % 3 == 0 else p) for i, (t, p) in enumerate(_sampled(nv, gpu, 0, 20, random.Random(2)))]
    e = gpu_energy(0, 20, 0, 4_000_000, samples, INTERVAL)
    assert e.coverage == 1.0 and e.why is None and e.joules == 4000


@pytest.mark.parametrize("covered", [True, False])
def test_a_counter_that_resets_falls_back_to_the_samples_only_when_they_cover(covered: bool) -> None:
    gpu = FakeGpu("GPU-a", watts=250, reset_at=17.0)
    nv = FakeNvml([gpu], Clock(0.0))
    t0, t1 = 10.0, 30.0
    samples = _sampled(nv, gpu, t0, t1, random.Random(3))
    if not covered:
        samples = [s for s in samples if s[0] < 20]
    before, after = int(nv.energy_mj(gpu, t0)), int(nv.energy_mj(gpu, t1))
    assert after < before  # the counter went back
    e = gpu_energy(t0, t1, before, after, samples, INTERVAL)
    assert e.source == "power samples"
    if covered:
        assert e.why is None and e.joules == pytest.approx(250 * 20, rel=0.01)
    else:
        assert e.why is not None and "cover" in e.why


def test_counter_and_samples_that_disagree_are_flagged() -> None:
    gpu = FakeGpu("GPU-a", watts=400)
    nv = FakeNvml([gpu], Clock(0.0))
    samples = _sampled(nv, gpu, 0, 20, random.Random(4))
    e = gpu_energy(0, 20, 0, 4_000_000, samples, INTERVAL)  # the counter says 200 W, the samples 400
    assert e.why is not None and "disagree" in e.why


def _meter_run(nv: FakeNvml, clock: Clock, pids: list[int], gpus: tuple[str, ...] = ()) -> Meter:
    nvml, why = open_nvml(nv)  # type: ignore[arg-type]
    assert why is None and nvml is not None
    meter = Meter(nvml, lambda: pids, gpus, interval=INTERVAL, clock=clock)
    for phase, seconds in (("accuracy", 12.0), ("speed-c8", 6.0), ("speed-c1", 3.0)):
        with meter.window(phase, work=lambda: (40, 800)):
            end = clock.t + seconds
            while clock.t < end:
                meter.sample()
                clock.t += INTERVAL
        clock.t += 1.0
    return meter


def test_the_meter_attributes_the_gpus_its_server_runs_on() -> None:
    clock = Clock()
    gpus = [
        FakeGpu("GPU-0", watts=90, processes={999: 3 << 30}),
        FakeGpu("GPU-1", watts=350, processes={4242: 7 << 30}),
        FakeGpu("GPU-2", watts=320, processes={4242: 5 << 30}),
    ]
    nv = FakeNvml(gpus, clock)
    meter = _meter_run(nv, clock, [4242])
    fp = meter.footprint(None)
    assert meter.gpus() == [1, 2]
    assert fp.memory is not None and fp.memory.gpu is not None
    assert fp.memory.gpu.peak_bytes == fp.memory.gpu.steady_bytes == 12 << 30  # its processes', not GPU-0's
    by_phase = {w.phase: w for w in fp.energy}
    assert set(by_phase) == {"accuracy", "speed-c8", "speed-c1"}
    for w in fp.energy:
        assert w.valid and w.gpus == ["GPU-1", "GPU-2"]
        assert w.joules == pytest.approx((350 + 320) * w.seconds, abs=0.01)
    assert by_phase["speed-c8"].output_tokens == 800 and by_phase["accuracy"].requests == 40


def test_named_gpus_read_device_memory_and_their_energy() -> None:
    clock = Clock()
    gpus = [FakeGpu("GPU-0", watts=100, used=2 << 30), FakeGpu("GPU-1", watts=300, used=9 << 30)]
    nv = FakeNvml(gpus, clock)
    meter = _meter_run(nv, clock, [], gpus=("GPU-1",))
    fp = meter.footprint(None)
    assert fp.memory is not None and fp.memory.gpu is not None and fp.memory.host is None
    assert fp.memory.gpu.peak_bytes == 9 << 30 and "GPU 1" in fp.memory.gpu.how
    assert all(w.joules == pytest.approx(300 * w.seconds, abs=0.01) for w in fp.energy)


def test_a_server_nvml_cannot_see_by_pid_is_read_on_the_gpus_it_names() -> None:
    # A managed server in another PID namespace (a container): its pid is not in NVML's list.
    clock = Clock()
    gpus = [FakeGpu("GPU-0", watts=100, used=2 << 30), FakeGpu("GPU-1", watts=300, used=9 << 30, processes={1: 5})]
    fp = _meter_run(FakeNvml(gpus, clock), clock, [4242], gpus=("1",)).footprint(None)
    assert fp.memory is not None and fp.memory.gpu is not None
    assert fp.memory.gpu.peak_bytes == 9 << 30 and "GPU 1 (every process)" in fp.memory.gpu.how
    assert all(w.gpus == ["GPU-1"] and w.joules == pytest.approx(300 * w.seconds, abs=0.01) for w in fp.energy)


def test_a_gpu_gone_unreadable_mid_phase_flags_that_phase_only() -> None:
    clock = Clock()
    gpu = FakeGpu("GPU-0", watts=200, processes={7: 1 << 30})
    nv = FakeNvml([gpu], clock)
    gpu.unreadable = [(clock.t + 2.0, clock.t + 9.0)]  # inside the accuracy pass
    fp = _meter_run(nv, clock, [7]).footprint(None)
    valid = {w.phase: w.valid for w in fp.energy}
    assert valid == {"accuracy": False, "speed-c8": True, "speed-c1": True}
    assert "cover" in (fp.energy[0].why or "")


def test_a_url_target_without_gpus_says_why() -> None:
    clock = Clock()
    nv = FakeNvml([FakeGpu("GPU-0")], clock)
    fp = _meter_run(nv, clock, []).footprint(None)
    assert fp.memory is not None and fp.memory.main is None and "did not start" in (fp.memory.why or "")
    assert all(not w.valid and "gpus:" in (w.why or "") for w in fp.energy)


@pytest.mark.parametrize(
    ("code", "says"),
    [(12, "no NVIDIA driver"), (9, "driver is not loaded"), (4, "no permission"), (999, "NVML failed")],
)
def test_nvml_that_cannot_start_is_one_reason(code: int, says: str) -> None:
    nvml, why = open_nvml(FakeNvml([FakeGpu("GPU-0")], init_error=code))  # type: ignore[arg-type]
    assert nvml is None and why is not None and says in why and "\n" not in why


def test_no_gpu_and_no_bindings_are_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = FakeNvml([])
    assert open_nvml(nv) == (None, "no NVIDIA GPU on this host")  # type: ignore[arg-type]
    assert nv.shutdown
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    nvml, why = open_nvml()
    assert nvml is None and why is not None and "orchestrator[gpu]" in why


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this host has an NVIDIA driver")
def test_the_real_bindings_without_a_driver_are_one_reason() -> None:
    pytest.importorskip("pynvml")
    nvml, why = open_nvml()
    assert nvml is None and why is not None and "\n" not in why


def _window(phase: str, joules: float | None, seconds: float, requests: int, tokens: int, **kw: object) -> EnergyWindow:
    return EnergyWindow(phase=phase, started_at=kw.pop("at", 0.0), seconds=seconds, gpus=kw.pop("gpus", ["G"]),  # type: ignore[arg-type]
                        joules=joules, valid=kw.pop("valid", True), requests=requests, output_tokens=tokens, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_energy_divided_by_work() -> None:
    # Two sessions of an accuracy pass (a resume): 300 requests for 9 kJ; the row answered 300, 210 right.
    windows = [_window("accuracy", 6000.0, 60, 200, 0), _window("accuracy", 3000.0, 30, 100, 0)]
    fig = energy_figure(windows, answered=300, correct=210)
    assert fig is not None and fig["valid"] and fig["windows"] == 2
    assert fig["j_per_answer"] == pytest.approx(30.0)
    assert fig["j_per_correct"] == pytest.approx(9000 / 210, rel=1e-4)
    assert fig["correct_per_kj"] == pytest.approx(210 / 9.0, rel=1e-4)
    assert fig["mean_watts"] == pytest.approx(100.0)
    level = energy_figure([_window("speed-c64", 1200.0, 10, 64, 8192)])
    assert (
        level is not None
        and level["concurrency"] == 64
        and level["j_per_token"] == pytest.approx(1200 / 8192, rel=1e-4)
    )
    flagged = energy_figure([windows[0], _window("accuracy", 10.0, 30, 100, 0, valid=False, why="gap")])
    assert flagged is not None and not flagged["valid"] and flagged["why"] == "gap"


def test_targets_that_shared_a_gpu_at_the_same_time_are_flagged() -> None:
    a = [
        _window("accuracy", 500.0, 10, 10, 0, at=100.0, gpus=["G0"]),
        _window("speed-c4", 50.0, 2, 4, 40, at=130.0, gpus=["G0"]),
    ]
    b = [
        _window("accuracy", 500.0, 10, 10, 0, at=105.0, gpus=["G0"]),
        _window("speed-c4", 50.0, 2, 4, 40, at=140.0, gpus=["G0"]),
    ]
    c = [_window("accuracy", 500.0, 10, 10, 0, at=100.0, gpus=["G1"])]
    shared = shared_windows({"a": a, "b": b, "c": c})
    assert shared == {("a", 0): ["b"], ("b", 0): ["a"]}  # in parallel on G0; c had its own GPU
    fig = row_figures(Footprint(energy=a), 10, 5, {0: ["b"]})
    assert fig is not None and not fig["accuracy_energy"]["valid"] and "b" in fig["accuracy_energy"]["why"]
    assert fig["speed_energy"][0]["valid"]


def test_a_resumed_run_keeps_earlier_windows_and_the_higher_peak() -> None:
    old = Footprint(
        memory=Memory(host=MemoryReading(peak_bytes=900, steady_bytes=500, how="rss", samples=3)),
        energy=[_window("accuracy", 100.0, 1, 1, 0), _window("speed-c4", 5.0, 1, 1, 1)],
    )
    new = Footprint(
        memory=Memory(host=MemoryReading(peak_bytes=700, steady_bytes=600, how="rss", samples=3)),
        energy=[_window("accuracy", 50.0, 1, 1, 0), _window("speed-c4", 7.0, 1, 1, 1)],
    )
    merged = merge(old, new)
    assert [(w.phase, w.joules) for w in merged.energy] == [("accuracy", 100.0), ("accuracy", 50.0), ("speed-c4", 7.0)]
    assert merged.memory is not None and merged.memory.host is not None
    assert (merged.memory.host.peak_bytes, merged.memory.host.steady_bytes) == (900, 600)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def test_gguf_size_counts_its_tensors(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    shapes = {"a": (64, 32), "b": (128,), "c": (16, 16, 4)}
    writer.add_tensor("a", np.ones(shapes["a"], dtype=np.float16))
    writer.add_tensor("b", np.ones(shapes["b"], dtype=np.float32))
    writer.add_tensor("c", np.ones(shapes["c"], dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    size = gguf_size(path)
    params = 64 * 32 + 128 + 16 * 16 * 4
    nbytes = 2 * 64 * 32 + 4 * 128 + 2 * 16 * 16 * 4
    assert (size.params, size.bytes) == (params, nbytes)
    assert size.bits_per_weight == pytest.approx(nbytes * 8 / params, abs=1e-3)
    assert size.bytes is not None and size.bytes < path.stat().st_size  # the header is not weights


def test_safetensors_folders_and_packed_weights(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    bf = tmp_path / "bf16"
    bf.mkdir()
    save_file({"w": np.zeros((256, 128), np.float16), "n": np.zeros(128, np.float32)}, str(bf / "model.safetensors"))
    size = folder_size(bf)
    assert (size.params, size.bytes) == (256 * 128 + 128, 2 * 256 * 128 + 4 * 128)
    gptq = tmp_path / "gptq"
    gptq.mkdir()
    save_file({"qweight": np.zeros((32, 128), np.int32), "scales": np.zeros((2, 128), np.float16)},
              str(gptq / "model-00001-of-00001.safetensors"))  # fmt: skip
    packed = folder_size(gptq)
    assert packed.bytes == 4 * 32 * 128 + 2 * 2 * 128 and packed.params is None and packed.bits_per_weight is None


def test_hub_sizes_are_cached_and_fall_back_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []

    def online(repo: str, revision: str | None) -> weights_mod.WeightsSize:
        calls.append(repo)
        return weights_mod.WeightsSize(bytes=10, params=5, bits_per_weight=16.0, source="Hub safetensors metadata")

    monkeypatch.setattr(weights_mod, "_hub_metadata", online)
    assert hub_size("org/model").bytes == 10 and hub_size("org/model").bytes == 10
    assert calls == ["org/model"]  # the second came from the cache
    cached = json.loads(next((tmp_path / "cache" / "weights").iterdir()).read_text())
    assert cached["source"] == "Hub safetensors metadata"

    def offline(repo: str, revision: str | None) -> weights_mod.WeightsSize:
        raise OSError("offline")

    monkeypatch.setattr(weights_mod, "_hub_metadata", offline)
    monkeypatch.setattr(weights_mod, "_local_snapshot", lambda repo, rev: None)
    estimate = hub_size("Qwen/Qwen2-7B-Instruct-GPTQ-Int4")
    assert estimate == matrix_estimate("Qwen/Qwen2-7B-Instruct-GPTQ-Int4")
    assert estimate.source is not None and estimate.source.startswith("matrix estimate")
    unknown = hub_size("org/other")
    assert unknown.bytes is None and unknown.why is not None and "org/other" in unknown.why


# ---------------------------------------------------------------------------------------------
# A bench on scripted servers with the fake NVML: figures against the power the GPUs drew
# ---------------------------------------------------------------------------------------------
WATTS = {"bf16": 300.0, "int4": 200.0, "awq": 150.0}


async def _bench_with_gpus(fake_url: Any, tmp_path: Path, data_dir: Path, parallel: bool) -> Report:
    from tests.test_speed_phase import _bench, _manifest, paced

    urls = {}
    for name in WATTS:
        urls[name], _ = await fake_url(paced(name, []))
    m = _manifest(tmp_path, data_dir, urls, client={"targets_in_parallel": parallel})
    gpus = {name: (name if not parallel else "bf16",) for name in WATTS}  # in parallel: all on one GPU
    m = dataclasses.replace(m, targets=tuple(dataclasses.replace(t, gpus=gpus[t.name]) for t in m.targets))
    run = tmp_path / "run"
    runner = await _bench(m, run, data_dir)
    assert not [n for n in runner.notes if "not measured" in n]
    write_report(run)
    return Report.from_json(json.loads((run / "report.json").read_text()))


async def test_bench_energy_is_what_the_named_gpus_drew(
    fake_url: Any, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nv = FakeNvml([FakeGpu(name, watts=w, used=(i + 2) << 30) for i, (name, w) in enumerate(WATTS.items())])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    report = await _bench_with_gpus(fake_url, tmp_path, data_dir, parallel=False)
    rows = {r.target: r for r in report.rows}
    for i, (name, watts) in enumerate(WATTS.items()):
        fp = rows[name].footprint
        assert fp is not None and fp.memory is not None and fp.memory.gpu is not None
        assert fp.memory.gpu.peak_bytes == (i + 2) << 30
        acc, level = fp.accuracy_energy, fp.main_energy
        assert acc is not None and level is not None and acc.valid and level.valid, (acc, level)
        for e in (acc, *fp.speed_energy):
            assert e is not None and e.joules is not None
            assert e.joules == pytest.approx(watts * e.seconds, rel=1e-3, abs=0.01)
        assert level.j_per_token == pytest.approx((level.joules or 0) / level.output_tokens, rel=1e-3)
        assert level.output_tokens == sum(1 for _ in range(level.requests)) * 12  # every reply ran its 12 tokens
        costs = rows[name].costs["mmlu"]
        assert acc.requests == 16
        assert acc.j_per_correct == pytest.approx((acc.joules or 0) / 16 * costs.answers / costs.correct, rel=1e-3)
    ratios = rows["int4"].footprint_vs_reference or {}
    bf16, int4 = (rows[n].footprint.main_energy for n in ("bf16", "int4"))  # type: ignore[union-attr]
    assert ratios["j_per_token"] == pytest.approx(int4.j_per_token / bf16.j_per_token, rel=1e-3)  # type: ignore[union-attr,operator]
    assert ratios["memory_peak_bytes"] == pytest.approx(3 / 2)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| J/token |" in md.split("\n\n")[1] and "## Size, memory and energy" in md
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Accuracy against energy" in html and "Accuracy against memory" in html


async def test_targets_in_parallel_on_one_gpu_are_flagged_not_shown(
    fake_url: Any, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu("bf16", watts=300)]))
    report = await _bench_with_gpus(fake_url, tmp_path, data_dir, parallel=True)
    for row in report.rows:
        acc = row.footprint.accuracy_energy if row.footprint else None
        assert acc is not None and not acc.valid and "at the same time" in (acc.why or "")
        # The speed phases take turns (speedphase.PhaseGate): each is the GPU's alone.
        assert row.footprint is not None and all(e is not None and e.valid for e in row.footprint.speed_energy)
    table = (tmp_path / "run" / "report.md").read_text().split("\n\n")[1]
    assert "flagged J/correct" in table


async def test_without_nvml_one_note_and_memory_says_why(
    fake_url: Any, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_speed_phase import _bench, _manifest, paced

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu("x")], init_error=12))
    url, _ = await fake_url(paced("s", []))
    runner = await _bench(_manifest(tmp_path, data_dir, {"bf16": url}), tmp_path / "run", data_dir)
    assert [n for n in runner.notes if "not measured" in n] == [
        "energy and GPU memory not measured: no NVIDIA driver (libnvidia-ml.so not found)"
    ]
    report = Report.from_json(build_report(tmp_path / "run"))
    fp = report.rows[0].footprint
    assert fp is not None and fp.memory is not None and fp.memory.main is None and fp.memory.why
    assert fp.accuracy_energy is not None and not fp.accuracy_energy.valid
    headers = render_markdown(report).split("\n\n")[1].splitlines()[0]
    assert "memory GB" in headers and "weights GB" in headers
    assert "J/token" not in headers  # nothing was read: no column of dashes
    assert "accuracy pass: not measured (no NVIDIA driver" in render_markdown(report)


def test_a_server_that_exports_its_rss_is_read_from_its_metrics() -> None:
    from orchestrator.backends.http import parse_prometheus
    from orchestrator.meter import metrics_memory

    text = (
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "process_resident_memory_bytes 2.5e+09\nvllm:num_requests_running 3.0\n"
        "python_gc_objects_collected_total 9\n"
    )
    scraped = parse_prometheus(text)
    assert scraped == {"process_resident_memory_bytes": 2.5e9, "vllm:num_requests_running": 3.0}
    memory = metrics_memory({"metrics_before": scraped, "metrics_after": {**scraped, RSS: 3.1e9}})
    assert memory is not None and memory.host is not None
    assert (memory.host.peak_bytes, memory.host.samples) == (int(3.1e9), 2) and "/metrics" in memory.host.how
    assert metrics_memory({"metrics_before": {"vllm:x": 1.0}}) is None


RSS = "process_resident_memory_bytes"


def test_a_compose_service_names_its_gpus_for_the_meter() -> None:
    from orchestrator.lifecycle import Service
    from orchestrator.manifest import parse_manifest

    svc = Service("qwen2-7b-bf16", "Qwen2-7B-Instruct", "Qwen/Qwen2-7B-Instruct", "BF16", "vllm",
                  "http://127.0.0.1:8001", 8001, ("2", "3"), "vllm/vllm-openai")  # fmt: skip
    m = parse_manifest({"run": {"name": "c"}, "tasks": {"mmlu": {}}, "targets": [svc.target()]})
    assert m.targets[0].gpus == ("2", "3")
    unpinned = Service("cpu", "M", None, "Q4_K_M", "llamacpp", "http://127.0.0.1:8002", 8002, (), "img")
    assert "gpus" not in unpinned.target()
