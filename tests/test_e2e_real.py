"""End to end on real servers: vLLM (CPU) and three GGUF quantizations on llama.cpp (F16 and
Q8_0 on llama.cpp's own llama-server, Q4_K_M on llama-cpp-python's server).

`orchestrate bench manifests/smoke.yaml` runs as a user would run it (a subprocess), MMLU limit
200 over all subjects and C-Eval limit 100, concurrency 16. A second run is killed with SIGKILL
mid-way and resumed; it must end with exactly the same samples, replies and table as the first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.report import build_report
from orchestrator.store import read_records
from orchestrator.tasks import build_task
from tests.support.processes import default_sigint

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "manifests" / "smoke.yaml"
TARGETS = ("tiny-vllm-f32", "tiny-llamacpp-f16", "tiny-llamacpp-q8_0", "tiny-llamacpp-q4_k_m")
TASKS = {"mmlu": 200, "ceval": 100, "ifeval": 100}
MAX_TOKENS = {"mmlu": 8, "ceval": 8, "ifeval": 64}
SUBJECTS = {"mmlu": 57, "ceval": 52, "ifeval": 9}  # IFEval: instruction groups

pytestmark = pytest.mark.real_server


def _env(tiny_model: Path, vllm_url: str, data_dir: Path, out: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SMOKE_MODEL_DIR": str(tiny_model),
        "SMOKE_VLLM_URL": vllm_url,
        "SMOKE_DATA_DIR": str(data_dir),
        "SMOKE_OUTPUT_DIR": str(out),
    }


def _bench(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "bench", *args, "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=default_sigint,  # the Ctrl-C test's child takes SIGINT, however the suite was started
    )


def _replies(run_dir: Path) -> dict[tuple[str, str, str], str]:
    out = {}
    for target in TARGETS:
        for task in TASKS:
            for r in read_records(run_dir / "samples" / target / f"{task}.qwen@2.jsonl"):
                out[(target, task, r["id"])] = r["reply"]
    return out


def _accuracy_cells(report: dict[str, Any]) -> dict[tuple[str, str], tuple[float, int]]:
    rows = report["rows"]
    return {(row["target"], name): (agg["accuracy"], agg["n"]) for row in rows for name, agg in row["tasks"].items()}


@pytest.fixture(scope="module")
def first_run(tiny_model: Path, vllm_url: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    proc = _bench(_env(tiny_model, vllm_url, data_dir, out), str(SMOKE), "--run-id", "first")
    stdout, stderr = proc.communicate(timeout=1800)
    assert proc.returncode == 0, stderr[-3000:]
    (out / "first" / "stdout.txt").write_text(stdout)
    return out / "first"


def test_every_sample_has_a_complete_record(first_run: Path, data_dir: Path) -> None:
    for task, limit in TASKS.items():
        expected = {s.id for s in build_task(task, data_dir, limit=limit).samples()}
        assert len(expected) == limit
        subjects = {s.subject for s in build_task(task, data_dir, limit=limit).samples()}
        assert len(subjects) == SUBJECTS[task]  # every subject represented
        for target in TARGETS:
            records = list(read_records(first_run / "samples" / target / f"{task}.qwen@2.jsonl"))
            ids = Counter(r["id"] for r in records)
            assert set(ids) == expected, (target, task)
            assert max(ids.values()) == 1
            for r in records:
                assert r["error"] is None, (target, r["id"], r["error"])  # zero errors at concurrency 16
                assert r["attempts"] >= 1
                assert r["request"]["temperature"] == 0.0 and r["request"]["seed"] == 1234
                assert r["request"]["max_tokens"] == MAX_TOKENS[task]
                assert r["finish_reason"] in ("length", "stop")
                # The qwen setup's extractors: Qwen's C-Eval cascade, OpenCompass's MMLU patterns.
                qwen_ceval_rules = ("answer_phrase", "correct_phrase", "leading_letter", "first_letter", "fuzzy_option")
                assert r["rule"] in (*qwen_ceval_rules, "unparsed", "ifeval") or r["rule"].startswith(
                    "opencompass_pattern_"
                ), r["rule"]
                assert r["completion_tokens"] is not None and r["token_source"] != "none"
                t = r["timing"]
                assert 0 < t["ttft"] <= t["e2e"] and t["chunks"] == sorted(t["chunks"])


def test_backend_quirks_recorded(first_run: Path) -> None:
    vllm = next(read_records(first_run / "samples" / "tiny-vllm-f32" / "mmlu.qwen@2.jsonl"))
    # vLLM: usage arrives in a separate chunk with empty choices.
    assert vllm["token_source"] == "usage" and vllm["prompt_tokens"] > 0
    assert vllm["raw"]["usage_chunk"]["choices"] == []
    python = next(read_records(first_run / "samples" / "tiny-llamacpp-q4_k_m" / "mmlu.qwen@2.jsonl"))
    # llama-cpp-python: no stream usage; counted with the GGUF's tokenizer through the server;
    # greedy needs repeat_penalty 1.0 on top of temperature 0.
    assert python["token_source"] == "server-tokenize" and python["server_timing"] is None
    assert python["request"]["repeat_penalty"] == 1.0
    # llama-server: usage in the stream, and its own timings.
    server = next(read_records(first_run / "samples" / "tiny-llamacpp-q8_0" / "mmlu.qwen@2.jsonl"))
    assert server["token_source"] == "usage" and server["server_timing"]["predicted_ms"] > 0
    assert server["request"]["repeat_penalty"] == 1.0
    meta = json.loads((first_run / "run.json").read_text())
    assert meta["servers"]["tiny-vllm-f32"]["v1_models"]["data"][0]["id"] == "tiny-qwen2"
    assert "llama_cpp.server" in meta["servers"]["tiny-llamacpp-q4_k_m"]["managed"]["command"]
    assert meta["servers"]["tiny-llamacpp-f16"]["managed"]["command"][0].endswith("llama-server")
    # The report names every row's server version: llama-cpp-python's from the launcher,
    # llama-server's from its /props (build and commit).
    assert meta["servers"]["tiny-llamacpp-q4_k_m"]["version"] == "llama-cpp-python 0.3.36"
    assert meta["servers"]["tiny-llamacpp-f16"]["version"].startswith("llama-server b")
    for target in ("tiny-llamacpp-f16", "tiny-llamacpp-q4_k_m"):
        assert "AVX2" in meta["servers"][target]["managed"]["build"], target
    # As many slots as requests in flight.
    assert meta["servers"]["tiny-llamacpp-f16"]["managed"]["measured"]["slots"] == 16
    # Memory: vLLM (a running server, not started here) from its /metrics; llama.cpp's from its process.
    memory = {name: facts["footprint"]["memory"] for name, facts in meta["servers"].items()}
    vllm_rss = memory["tiny-vllm-f32"]["host"]
    assert "process_resident_memory_bytes" in vllm_rss["how"] and vllm_rss["steady_bytes"] > 0
    assert all("RSS of the server" in memory[t]["host"]["how"] for t in TARGETS[1:])


def test_report_recomputed_from_records(first_run: Path) -> None:
    report = json.loads((first_run / "report.json").read_text())
    for row in report["rows"]:
        for task in TASKS:
            records = list(read_records(first_run / "samples" / row["target"] / f"{task}.qwen@2.jsonl"))
            if task == "ifeval":
                strict = [all(r["score_details"]["strict"]) for r in records]
                loose = [all(r["score_details"]["loose"]) for r in records]
                assert row["tasks"][task]["accuracy"] == pytest.approx(sum(strict) / len(strict))
                assert row["tasks"][task]["prompt_loose"] == pytest.approx(sum(loose) / len(loose))
                continue
            correct = [r["correct"] for r in records]
            by_subject: dict[str, list[bool]] = {}
            for r in records:
                by_subject.setdefault(r["subject"], []).append(r["correct"])
            micro = sum(correct) / len(correct)
            macro = sum(sum(v) / len(v) for v in by_subject.values()) / len(by_subject)
            agg = row["tasks"][task]
            assert agg["n"] == len(records)
            assert agg["accuracy"] == pytest.approx(micro if task == "mmlu" else macro)
    stdout = (first_run / "stdout.txt").read_text()
    for header in ("MMLU", "C-Eval", "IFEval", "Q4_K_M", "tiny-qwen2"):
        assert header in stdout
    assert (first_run / "report.md").read_text().count("| tiny-qwen2 |") == len(TARGETS)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _wait_for_records(proc: subprocess.Popen[str], path: Path, n: int, timeout: float) -> None:
    """Poll until ``path`` holds ``n`` records (or the run ended, or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Replies of a llama-server target that may differ between two runs (batched near-ties, below):
# measured 10 of 400 (F16) and 65 of 400 (Q8_0, whose batched kernels quantize the activations)
# on this random model. `--noise-floor` measures the same for a report.
LLAMA_SERVER_FLIPS = 0.3


def _llama_servers() -> list[str]:
    """PIDs of llama.cpp servers of either kind still running."""
    found = subprocess.run(["pgrep", "-f", "llama_cpp.server|bin/llama-server"], capture_output=True, text=True)
    return found.stdout.split()


def test_kill_9_then_resume_is_exact(
    first_run: Path, tiny_model: Path, vllm_url: str, data_dir: Path, tmp_path: Path
) -> None:
    env = _env(tiny_model, vllm_url, data_dir, tmp_path)
    proc = _bench(env, str(SMOKE), "--run-id", "killed")
    run_dir = tmp_path / "killed"
    victim = run_dir / "samples" / "tiny-llamacpp-f16" / "mmlu.qwen@2.jsonl"
    _wait_for_records(proc, victim, 40, 900)
    assert proc.poll() is None, "run ended before it could be killed"
    meta = json.loads((run_dir / "run.json").read_text())
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    scorers = [pid for pid in children if "orchestrator.scoring" in _cmdline(int(pid))]
    assert scorers, "no scoring process (IFEval is in the run)"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    partial = sum(1 for _ in read_records(victim))
    assert 40 <= partial < TASKS["mmlu"]
    # The managed llama.cpp server and the scoring process died with their parent (no orphans):
    # the kernel's parent-death signal reaches them at once; their exit may take a moment.
    deadline = time.monotonic() + 10
    while True:
        leftovers = _llama_servers()
        orphans = [pid for pid in scorers if _alive(int(pid))]
        if not (leftovers or orphans) or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # a poll's pace, under the deadline
    assert not leftovers, f"orphan llama.cpp servers: {leftovers}"
    assert not orphans, f"orphan scoring process: {orphans}"
    assert meta["sessions"][-1]["status"] == "running"

    resumed = _bench(env, "--resume", str(run_dir))
    _, stderr = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, stderr[-3000:]

    # No sample lost, none duplicated; the resumed session sent only what was missing.
    for target in TARGETS:
        for task in TASKS:
            ids = Counter(r["id"] for r in read_records(run_dir / "samples" / target / f"{task}.qwen@2.jsonl"))
            assert len(ids) == TASKS[task] and max(ids.values()) == 1, (target, task)
    # Greedy decoding: identical replies to the uninterrupted run, on vLLM. llama-cpp-python reuses
    # the KV cache of the longest prefix shared with the previous request, and its Q4_K kernels
    # round differently for different batch shapes (F16 and Q8_0 are bit-exact, measured), so which
    # request came before can flip a near-tie of the random model at Q4_K_M: rare, but not
    # impossible. llama-server decodes its slots together, so which requests shared a batch
    # (timing, never the same twice) can flip near-ties at any quantization: bounded by measurement.
    first, second = _replies(first_run), _replies(run_dir)
    assert first.keys() == second.keys()
    differing = [k for k in first if first[k] != second[k]]
    per_target = Counter(k[0] for k in differing)
    n = len(first) / len(TARGETS)
    bounds = {"tiny-vllm-f32": 0, "tiny-llamacpp-q4_k_m": 0.02 * n, "tiny-llamacpp-f16": LLAMA_SERVER_FLIPS * n,
              "tiny-llamacpp-q8_0": LLAMA_SERVER_FLIPS * n}  # fmt: skip
    assert all(per_target[t] <= bound for t, bound in bounds.items()), (per_target, n)
    # Hence the same table (wherever the replies are the same).
    cells_first, cells_second = _accuracy_cells(build_report(first_run)), _accuracy_cells(build_report(run_dir))
    flipped = {(k[0], k[1]) for k in differing}
    assert {k: v for k, v in cells_first.items() if k not in flipped} == {
        k: v for k, v in cells_second.items() if k not in flipped
    }
    sessions = json.loads((run_dir / "run.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["running", "done"]


def test_ctrl_c_stops_managed_server(tiny_model: Path, vllm_url: str, data_dir: Path, tmp_path: Path) -> None:
    env = _env(tiny_model, vllm_url, data_dir, tmp_path)
    proc = _bench(env, str(SMOKE), "--run-id", "ctrl-c", "--tasks", "ceval", "--limit", "60")
    victim = tmp_path / "ctrl-c" / "samples" / "tiny-llamacpp-f16" / "ceval.qwen@2.jsonl"
    _wait_for_records(proc, victim, 5, 600)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    # The server was stopped before the orchestrator exited (not merely orphaned and killed later).
    leftovers = _llama_servers()
    assert not leftovers
    records = list(read_records(victim))
    assert 5 <= len(records) < 60 and all(r["error"] is None for r in records)


def test_a_real_server_that_dies_is_reported_not_scored(
    tiny_model: Path, vllm_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """SIGILL, as the AMX kernels of a native build gave: one line, the row says why, no error records."""
    env = _env(tiny_model, vllm_url, data_dir, tmp_path)
    proc = _bench(env, str(SMOKE), "--run-id", "died", "--tasks", "mmlu", "--limit", "60")
    victim = tmp_path / "died" / "samples" / "tiny-llamacpp-q8_0" / "mmlu.qwen@2.jsonl"
    _wait_for_records(proc, victim, 5, 900)
    pids = subprocess.run(["pgrep", "-f", "tiny-qwen2-q8_0.gguf"], capture_output=True, text=True).stdout.split()
    assert pids, "no llama.cpp server for q8_0"
    for pid in pids:
        os.kill(int(pid), signal.SIGILL)
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 3, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "llama.cpp server for tiny-llamacpp-q8_0 died: signal 4 (SIGILL); log: " in stderr
    records = list(read_records(victim))
    assert 5 <= len(records) < 60 and all(r["error"] is None for r in records)
    report = json.loads((tmp_path / "died" / "report.json").read_text())
    rows = {row["target"]: row for row in report["rows"]}
    assert "signal 4 (SIGILL)" in rows["tiny-llamacpp-q8_0"]["failure"]
    # The next target ran as usual.
    assert rows["tiny-llamacpp-q4_k_m"]["failure"] is None and rows["tiny-llamacpp-q4_k_m"]["tasks"]["mmlu"]["n"] == 60


@pytest.fixture(scope="module")
def llamacpp_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A llama.cpp server started by the test (not managed by the orchestrator), on the F16 GGUF."""
    from tests.support.servers import free_port, started

    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_model / "tiny-qwen2-f16.gguf"),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "32768", "--interrupt_requests", "False"]  # fmt: skip
    with started(cmd, f"http://127.0.0.1:{port}/v1/models", log):
        yield f"http://127.0.0.1:{port}"


def test_backend_swap_side_by_side(
    tiny_model: Path, vllm_url: str, llamacpp_url: str, data_dir: Path, tmp_path: Path
) -> None:
    swap = REPO / "manifests" / "swap.yaml"
    runs = {}
    for backend, url in (("vllm", vllm_url), ("llamacpp", llamacpp_url)):
        env = _env(tiny_model, vllm_url, data_dir, tmp_path) | {"SWAP_URL": url}
        proc = _bench(env, str(swap), "--backend", backend, "--run-id", f"swap-{backend}")
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        runs[backend] = tmp_path / f"swap-{backend}"
        meta = json.loads((runs[backend] / "run.json").read_text())
        assert meta["manifest"]["targets"][0]["backend"] == backend
    vllm_version = json.loads((runs["vllm"] / "run.json").read_text())["servers"]["tiny"]["version"]
    assert vllm_version and vllm_version[0].isdigit()  # the report names the server version per row
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "report", str(runs["vllm"]), str(runs["llamacpp"])],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"vllm {vllm_version}" in done.stdout and "llamacpp" in done.stdout and "(Δ)" in done.stdout
    cmp = json.loads((runs["llamacpp"] / "compare-swap-vllm.json").read_text())
    [row] = cmp["rows"]
    assert row["a"]["backend"].startswith("vllm") and row["b"]["backend"] == "llamacpp"
    for name, f in row["figures"].items():
        if name in ("MMLU", "C-Eval", "IFEval", "req/s", "TTFT p50 ms"):
            assert f["a"] is not None and f["b"] is not None
            assert f["delta"] == pytest.approx(f["b"] - f["a"])
    # llama.cpp's records carry its own greedy knob; vLLM's do not.
    llama = next(read_records(runs["llamacpp"] / "samples" / "tiny" / "mmlu.qwen@2.jsonl"))
    vllm = next(read_records(runs["vllm"] / "samples" / "tiny" / "mmlu.qwen@2.jsonl"))
    assert llama["request"]["repeat_penalty"] == 1.0 and "repeat_penalty" not in vllm["request"]


def test_load_sweep_against_vllm(tiny_model: Path, vllm_url: str, data_dir: Path, tmp_path: Path) -> None:
    env = _env(tiny_model, vllm_url, data_dir, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "load", str(REPO / "manifests" / "load.yaml"),
         "--run-id", "sweep", "--no-progress", "--bandwidth-gbs", "20"],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "sweep"
    for name in ("load_report.html", "load_report.json", "load_report.csv", "load_tiny-vllm.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "TTFT" in done.stdout and "goodput" in done.stdout
    report = json.loads((run_dir / "load_report.json").read_text())
    levels = report["targets"]["tiny-vllm"]
    assert [m["level"] for m in levels] == [1, 4]
    for m in levels:
        assert m["completed"] == 60 and m["failed"] == 0
        # Little's law for a closed loop of c slots: throughput x mean time a request holds its slot ~ c.
        # A slot is held while the client prepares the request (queue time: large when vLLM's threads
        # starve the client on these 2 cores), for the E2E latency, and while the client finishes
        # the reply (post time); cool-down requests keep the slots full until the last measured ends.
        held_ms = m["queue_ms"]["mean"] + m["e2el_ms"]["mean"] + m["post_ms"]["mean"]
        assert m["request_throughput"] * held_ms / 1000 == pytest.approx(m["level"], rel=0.15)
        # vLLM honours ignore_eos: every request produced exactly the requested length.
        assert m["mean_output_tokens"] == 32
        # Server usage and the model's tokenizer agree on every prompt (chat template included).
        prompts = m["prompt_token_agreement"]["usage vs tokenizer"]
        assert prompts["n"] == 60 and prompts["exact"] == 1.0
        # Outputs are counted by both too, and the disagreement is reported, not hidden: this random
        # model emits byte fragments that the server detokenizes to U+FFFD, so re-tokenizing its text
        # overcounts (a real model's text re-tokenizes to its own count).
        outputs = m["token_count_agreement"]["usage vs tokenizer"]
        assert outputs["n"] == 60 and outputs["mean_abs_diff"] >= 0
    records = list(read_records(run_dir / "samples" / "tiny-vllm" / "load-concurrency-4.load.jsonl"))
    assert all(r["completion_tokens"] == 32 and r["request"]["ignore_eos"] is True for r in records)
    meta = json.loads((run_dir / "run.json").read_text())
    metrics = meta["server_metrics"]["tiny-vllm/concurrency-4"]
    assert metrics["after"] and any(k.startswith("vllm:") for k in metrics["after"])  # /metrics scraped
    assert meta["client"]["cpu_us_per_request"] > 0
    roof = report["roofline"]["tiny-vllm"]
    # The tensors' bytes: the file less its 8-byte length and the JSON header it gives.
    path = tiny_model / "hf" / "model.safetensors"
    weights = path.stat().st_size - 8 - int.from_bytes(path.read_bytes()[:8], "little")
    assert roof["weight_bytes"] == weights and roof["bound_tok_s"] == pytest.approx(20e9 / weights)
    # vLLM on these 2 starved cores sometimes sends a whole stream in one burst (a raw-socket client
    # sees it too), so TPOT p50 can be 0: there is then no achieved figure, rather than a division by 0.
    tpot = levels[0]["tpot_ms"]["p50"]
    assert roof["achieved_tok_s"] == (pytest.approx(1000 / tpot) if tpot else None)


# x86-64-v3: what scripts/install.sh compiles llama.cpp for (runs on any x86-64 CPU since 2013).
PORTABLE = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the instruction-set baseline is x86-64's")
def test_llama_cpp_is_built_portably() -> None:
    """A native build (-march=native) compiled AMX kernels that died with SIGILL on quantized models."""
    from orchestrator.llamacpp.build import _CPU_FLAGS, check_build

    build = check_build(sys.executable)
    assert build.version == "0.3.36"
    features = {f for f in build.features if f in _CPU_FLAGS}  # instruction sets only
    if os.environ.get("ORCHESTRATOR_LLAMA_NATIVE") == "1":
        pytest.skip("native build asked for (ORCHESTRATOR_LLAMA_NATIVE=1)")
    assert {"AVX2", "FMA", "F16C"} <= features, features
    assert features <= PORTABLE, f"compiled for more than x86-64-v3: {sorted(features - PORTABLE)}"
