"""The speed phase on real servers: llama.cpp's llama-server (F16, Q8_0) and llama-cpp-python's
server (Q4_K_M) started by the orchestrator on the tiny random Qwen2 model, the accuracy pass
asking top-3 logprobs with the noise floor on, `orchestrate bench` run as a user runs it.

Every row gets the same workload (read back from the stored requests); the phase asks no
logprobs and the noise-floor rows send none of it; llama-server runs every reply its whole length
(end-of-sequence ignored) while llama-cpp-python's real lengths are reported; the table's speed
columns are the phase's figures, recomputed here from its records, and batch-1 decode is set
against the bandwidth bound given on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.loadtest import level_metrics
from orchestrator.manifest import LoadProfile
from orchestrator.report.model import Report
from orchestrator.store import RunStore, read_records

pytestmark = pytest.mark.real_server

REPO = Path(__file__).resolve().parents[1]
OUT_TOKENS = 24
BANDWIDTH_GBS = 20.0
ROWS = ("f16", "q8", "q4")


@pytest.fixture(scope="module")
def speed_run(tiny_model: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("speed")

    def gguf(name: str, quant: str, file: str, server: str) -> dict[str, Any]:
        return {"name": name, "model": "tiny-qwen2", "quantization": quant, "backend": "llamacpp",
                "launch": {"model_path": str(tiny_model / file), "n_ctx": 8192, "server": server}}  # fmt: skip

    targets = [
        gguf("f16", "F16", "tiny-qwen2-f16.gguf", "llama-server"),
        gguf("q8", "Q8_0", "tiny-qwen2-q8_0.gguf", "llama-server"),
        gguf("q4", "Q4_K_M", "tiny-qwen2-q4_k_m.gguf", "llama-cpp-python"),
    ]
    targets[1]["tokenizer"] = str(tiny_model / "hf")  # one row names the model's tokenizer: every row uses it
    manifest = {
        "run": {"name": "speed", "output_dir": str(out), "data_dir": str(data_dir), "noise_floor": True},
        "tasks": {"mmlu": {"limit": 12, "max_tokens": 6}},
        "generation": {"logprobs": 3},
        "client": {"concurrency": 4, "retries": 2},
        "speed_phase": {"requests": 8, "batch1_requests": 3, "warmup": 1, "input_tokens": 48,
                        "output_tokens": OUT_TOKENS, "duration": 30},
        "targets": targets,
    }  # fmt: skip
    path = out / "speed.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cmd = [sys.executable, "-m", "orchestrator.cli", "bench", str(path), "--run-id", "s", "--no-progress",
           "--bandwidth-gbs", str(BANDWIDTH_GBS)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1200, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "s" / "stdout.txt").write_text(done.stdout)
    return out / "s"


def _levels(run: Path, target: str) -> dict[int, list[dict[str, Any]]]:
    folder = run / "samples" / target
    return {int(p.name.split(".")[0].removeprefix("speed-c")): list(read_records(p)) for p in folder.glob("speed-*")}


def test_every_row_gets_the_same_workload_without_logprobs(speed_run: Path) -> None:
    levels = {name: _levels(speed_run, name) for name in ROWS}
    assert all(sorted(found) == [1, 4] for found in levels.values()), {k: sorted(v) for k, v in levels.items()}
    for c in (1, 4):
        sent = {
            name: [(r["index"], r["prompt_digest"], r["request"]["max_tokens"]) for r in levels[name][c]]
            for name in ROWS
        }
        ordered = {name: sorted(v) for name, v in sent.items()}
        assert ordered["f16"] == ordered["q8"] == ordered["q4"], c
        assert {m for _, _, m in ordered["f16"]} == {OUT_TOKENS}
    for name in ROWS:
        for records in levels[name].values():
            assert all(r["error"] is None for r in records)
            # Greedy, and no logprobs: the accuracy pass's top-3 is not the phase's business.
            assert all(r["request"]["temperature"] == 0 for r in records)
            assert not any(r["request"].get(k) for r in records for k in ("logprobs", "n_probs", "top_logprobs"))
    # llama-server honours ignore_eos: every reply runs its whole length; llama-cpp-python's own.
    for name in ("f16", "q8"):
        assert {r["completion_tokens"] for rs in levels[name].values() for r in rs} == {OUT_TOKENS}
        assert all(rs and rs[0]["request"].get("ignore_eos") for rs in levels[name].values())
    meta = RunStore(speed_run).require_meta()
    notes = " ".join(meta.server("q4").speed_phase["notes"])  # type: ignore[index]
    assert "cannot ignore end-of-sequence" in notes
    # The accuracy pass did ask for them, and the noise floor's rows sent no phase of their own.
    sample = next(read_records(speed_run / "samples" / "f16" / "mmlu.qwen@2.jsonl"))
    assert sample["logprobs"]
    assert not list((speed_run / "samples" / "f16.noise").glob("speed-*"))
    assert not list((speed_run / "samples" / "f16.noise-c1").glob("speed-*"))


def test_the_tables_speed_is_the_phases_and_batch1_meets_the_roofline(speed_run: Path) -> None:
    report = Report.from_json(__import__("json").loads((speed_run / "report.json").read_text()))
    meta = RunStore(speed_run).require_meta()
    table = (speed_run / "report.md").read_text().split("\n\n")[1]
    bounded = []
    for row in report.rows:
        if row.noise_of:
            assert row.speed_phase is None
            continue
        phase = row.speed_phase
        assert phase is not None and phase.main is not None and phase.batch1 is not None
        facts = meta.server(row.target).speed_phase
        assert facts is not None
        first = facts["levels"][0]
        records = RunStore(speed_run).level_records(row.target, first["file"], "speed")
        again = level_metrics(records, LoadProfile.from_dict(first["profile"]))
        assert phase.main.concurrency == 4 and phase.main.completed == 8
        assert phase.main.requests_per_s == pytest.approx(again["request_throughput"])
        assert phase.main.tpot_p50_ms == pytest.approx(again["tpot_ms"]["p50"])
        line = next(line for line in table.splitlines() if f"| {row.quantization} |" in line)
        assert f"| {phase.main.requests_per_s:.2f} |" in line and f"{phase.main.tpot_p50_ms:.1f}" in line
        # Batch-1 decode against the bound the command line gave: bandwidth / the GGUF's tensor bytes.
        assert row.footprint is not None and row.footprint.weights is not None
        size = row.footprint.weights.bytes
        assert size is not None
        roof = phase.roofline or {}
        assert roof["bound_tok_s"] == pytest.approx(BANDWIDTH_GBS * 1e9 / size)
        assert roof["achieved_tok_s"] == phase.batch1.decode_tokens_per_s
        # The tiny model can decode faster than its stream is flushed: a reply in one burst has a
        # client TPOT of ~0, and no decode rate is claimed from it.
        if phase.batch1.decode_tokens_per_s is not None:
            bounded.append(row.target)
            assert roof["fraction"] == pytest.approx(phase.batch1.decode_tokens_per_s / roof["bound_tok_s"])
            assert f"{100 * roof['fraction']:.0f}% of bound" in line
    assert bounded
    stdout = (speed_run / "stdout.txt").read_text()
    assert "batch-1 tok/s" in stdout and "controlled speed phase" in stdout


def test_each_row_has_its_weights_and_the_rss_of_its_server(speed_run: Path, tiny_model: Path) -> None:
    from orchestrator.weights import folder_size

    report = Report.from_json(__import__("json").loads((speed_run / "report.json").read_text()))
    params = folder_size(tiny_model / "hf").params  # the HF checkpoint's tensors, read without gguf
    files = {t["name"]: Path(t["launch"]["model_path"]) for t in RunStore(speed_run).require_meta().manifest["targets"]}
    bits = {"f16": (16.0, 16.5), "q8": (8.5, 9.0), "q4": (4.5, 6.5)}
    table = (speed_run / "report.md").read_text().split("\n\n")[1]
    rows = {row.target: row for row in report.rows}
    for name in ROWS:
        fp = rows[name].footprint
        assert fp is not None and fp.weights is not None and fp.memory is not None
        w = fp.weights
        assert w.source == "GGUF tensors" and w.params == params
        assert w.bytes is not None and w.bytes < files[name].stat().st_size  # metadata (the vocabulary) is not weights
        low, high = bits[name]
        assert w.bits_per_weight is not None and low <= w.bits_per_weight <= high, (name, w.bits_per_weight)
        # Memory measured on the server process: no GPU here, so host RSS, which holds the mapped weights.
        host = fp.memory.host
        assert host is not None and fp.memory.gpu is None and host.samples > 0
        assert host.peak_bytes is not None and host.steady_bytes is not None
        assert host.peak_bytes >= host.steady_bytes > w.bytes
        assert "RSS" in host.how
        line = next(line for line in table.splitlines() if f"| {rows[name].quantization} |" in line)
        assert f"{w.bytes / 1e9:.2f}" in line and f"{host.peak_bytes / 1e9:.2f}" in line
    # llama-server is one process (its peak is the kernel's high-water mark); llama-cpp-python's
    # server is Python with its own RSS.
    assert "VmHWM" in (rows["f16"].footprint.memory.host.how)  # type: ignore[union-attr]
    ratios = rows["q8"].footprint_vs_reference or {}
    assert ratios["weights_bytes"] == pytest.approx(
        rows["q8"].footprint.weights.bytes / rows["f16"].footprint.weights.bytes  # type: ignore[union-attr,operator]
    )
    # Energy: one note says why it was not measured (no GPU or driver on these machines), never a failure.
    notes = [n for s in RunStore(speed_run).require_meta().sessions for n in s.get("notes", [])]
    assert len([n for n in notes if n.startswith("energy and GPU memory not measured: ")]) == 1
    assert all(e is None or not e.valid for row in report.rows if row.footprint for e in row.footprint.speed_energy)
