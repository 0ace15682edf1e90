"""A managed server that dies mid-run, a build this CPU cannot run, and a machine without the Hub.

The crashing server is a fault-injecting stand-in (tests/support/fake_llama_python.py); the real
llama.cpp servers die the same way in tests/test_e2e_real.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.llamacpp import LaunchError, check_build, cpu_flags, describe_exit
from orchestrator.store import read_records

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "support" / "fake_llama_python.py"


def fake_python(tmp_path: Path) -> Path:
    """An executable that the launcher takes for a Python with llama-cpp-python."""
    path = tmp_path / "fake-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def orchestrate(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def managed_manifest(tmp_path: Path, data_dir: Path, python: Path, concurrency: int) -> Path:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")  # the stand-in never reads it
    data = {
        "run": {"name": "death", "output_dir": str(tmp_path / "runs"), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": 40, "shots": 0}},
        "generation": {"stream": False},
        "client": {"concurrency": concurrency, "retries": 3},
        "targets": [
            {
                "name": "q8_0",
                "model": "M",
                "quantization": "Q8_0",
                "backend": "llamacpp",
                "launch": {"model_path": str(model), "python": str(python), "startup_timeout": 60},
            }
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("concurrency", [1, 4])
def test_dead_server_stops_its_target_with_one_line_and_burns_no_sample(
    tmp_path: Path, data_dir: Path, concurrency: int
) -> None:
    manifest = managed_manifest(tmp_path, data_dir, fake_python(tmp_path), concurrency)
    done = orchestrate("bench", str(manifest), "--run-id", "r", "--no-progress", env={"FAKE_LLAMA_DIE_AFTER": "7"})
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    line = next(ln for ln in done.stderr.splitlines() if "died" in ln)
    assert "llama.cpp server for q8_0 died: signal 4 (SIGILL); log: " in line
    assert "executing an instruction this CPU rejects" in line  # the log's tail
    run = tmp_path / "runs" / "r"
    records = list(read_records(run / "samples" / "q8_0" / "mmlu.qwen@2.jsonl"))
    # What was answered (all of the first 7 when one request runs at a time); the requests the
    # crash cut off are not errors and were not retried.
    assert len(records) == 7 if concurrency == 1 else 1 <= len(records) <= 7
    assert all(r["error"] is None and r["attempts"] == 1 for r in records)
    report = json.loads((run / "report.json").read_text())
    assert "signal 4 (SIGILL)" in report["rows"][0]["failure"]
    assert "[orchestrator] llama.cpp server died: signal 4 (SIGILL)" in (run / "servers" / "q8_0.log").read_text()
    md = (run / "report.md").read_text()
    assert "## Failed targets" in md and "signal 4 (SIGILL)" in md
    assert "| % |" not in md

    # The server is fine again: resume sends only what is missing and clears the failure.
    again = orchestrate("bench", "--resume", str(run), "--no-progress")
    assert again.returncode == 0, again.stderr
    records = list(read_records(run / "samples" / "q8_0" / "mmlu.qwen@2.jsonl"))
    assert len(records) == 40 and len({r["id"] for r in records}) == 40
    report = json.loads((run / "report.json").read_text())
    assert report["rows"][0]["failure"] is None


def test_server_that_dies_at_start_says_how(tmp_path: Path, data_dir: Path) -> None:
    manifest = managed_manifest(tmp_path, data_dir, fake_python(tmp_path), 1)
    done = orchestrate(
        "bench", str(manifest), "--run-id", "r", "--no-progress", env={"FAKE_LLAMA_BUILD": "not a system info line"}
    )
    # The build check found no instruction set to check: the server starts and answers.
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad-python"
    bad.write_text("#!/bin/sh\n[ \"$1\" = -c ] && echo 'CPU : AVX2 = 1 |' && exit 0\nkill -SEGV $$\n")
    bad.chmod(0o755)
    manifest = managed_manifest(tmp_path, data_dir, bad, 1)
    done = orchestrate("bench", str(manifest), "--run-id", "r2", "--no-progress")
    assert done.returncode == 3
    assert "llama.cpp server for q8_0 exited at start: signal 11 (SIGSEGV)" in done.stderr


def test_describe_exit() -> None:
    assert describe_exit(0) == "code 0"
    assert describe_exit(1) == "code 1"
    assert describe_exit(-4) == "signal 4 (SIGILL)"
    assert describe_exit(-9) == "signal 9 (SIGKILL)"


def test_a_build_for_instructions_this_cpu_lacks_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = fake_python(tmp_path)
    monkeypatch.setenv("FAKE_LLAMA_BUILD", "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 |")
    import orchestrator.llamacpp.build as launch

    monkeypatch.setattr(launch, "cpu_flags", lambda: {"sse2", "pni", "avx", "avx2"})
    check_build.cache_clear()
    with pytest.raises(LaunchError, match=r"built for AVX512, AMX_INT8, which this CPU lacks; rebuild"):
        check_build(str(python))
    monkeypatch.setattr(launch, "cpu_flags", lambda: {"sse2", "pni", "avx", "avx2", "avx512f", "amx_int8"})
    check_build.cache_clear()
    assert check_build(str(python)).features == ("SSE3", "AVX", "AVX2", "AVX512", "AMX_INT8")
    check_build.cache_clear()


def test_cpu_flags_are_read() -> None:
    flags = cpu_flags()
    if sys.platform == "linux":
        assert flags is not None and flags  # every Linux CPU lists some


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is: connections are refused


def no_hub_env(tmp_path: Path) -> dict[str, str]:
    """The Hub unreachable (connection refused) and nothing cached."""
    return {
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        "ORCHESTRATOR_DATA_DIR": "",
    }


def _one_clear_line(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: cannot fetch ") and f"{what} from the Hugging Face Hub (" in line
    assert "--data-dir" in line and "launch.model_path" in line
    return line


@pytest.mark.slow
def test_main_job_without_the_hub_is_one_line_exit_2(tmp_path: Path) -> None:
    """The README's main job on a machine without the Hub: the GGUF files cannot be fetched."""
    manifest = yaml.safe_load((REPO / "manifests" / "local.yaml").read_text())
    manifest["run"]["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(manifest))
    done = orchestrate("bench", str(path), "--no-progress", env=no_hub_env(tmp_path), cwd=tmp_path)
    _one_clear_line(done, "Qwen/Qwen2-0.5B-Instruct-GGUF/qwen2-0_5b-instruct-fp16.gguf")
    assert not (tmp_path / "runs").exists()  # no run directory for a run that never started


# Each case waits out huggingface_hub's own retries (about 25 s): one per kind of download, the
# data sets all go through the same orchestrator.hub.fetch.
@pytest.mark.slow
@pytest.mark.parametrize(("task", "what"), [("mmlu", "cais/mmlu")])
def test_benchmark_data_without_the_hub_is_one_line_exit_2(tmp_path: Path, task: str, what: str) -> None:
    data: dict[str, Any] = {
        "run": {"name": "nohub", "output_dir": str(tmp_path / "runs")},
        "tasks": {task: {"limit": 3}},
        "targets": [{"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "url": "http://x:1"}],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    done = orchestrate("bench", str(path), "--no-progress", env=no_hub_env(tmp_path), cwd=tmp_path)
    _one_clear_line(done, what or "google/IFEval")
    assert not (tmp_path / "runs").exists()


def test_resume_reuses_the_data_dir_it_was_started_with(tmp_path: Path, data_dir: Path) -> None:
    """`bench --data-dir D` then `--resume` alone, on a machine without the Hub: D again, not the Hub."""
    data: dict[str, Any] = {
        "run": {"name": "dd", "output_dir": str(tmp_path / "runs")},
        "tasks": {"mmlu": {"limit": 5, "shots": 0}},
        "generation": {"stream": False},
        "targets": [{"name": "q8_0", "model": "M", "quantization": "Q8_0", "backend": "llamacpp",
                     "launch": {"model_path": str(tmp_path / "m.gguf"), "python": str(fake_python(tmp_path))}}],
    }  # fmt: skip
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    env = no_hub_env(tmp_path)
    first = orchestrate("bench", str(path), "--run-id", "r", "--data-dir", str(data_dir), "--no-progress", env=env)
    assert first.returncode == 0, first.stderr
    again = orchestrate("bench", "--resume", str(tmp_path / "runs" / "r"), "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    assert "Hugging Face Hub" not in again.stderr
