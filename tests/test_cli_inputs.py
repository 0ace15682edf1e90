"""Bad command-line input: one line, exit 2, before anything starts; and --help tells the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def orchestrate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def write(tmp_path: Path, data_dir: Path, **changes: object) -> Path:
    data: dict[str, object] = {
        "run": {"name": "in", "output_dir": str(tmp_path / "runs"), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": 2, "shots": 0}, "ceval": {"limit": 2}},
        "targets": [
            {"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "url": "http://127.0.0.1:9"}
        ],
    }
    data.update(changes)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--levels", "abc"], "--levels: expected comma-separated numbers"),
        (["--duration", "-5"], "duration must be a positive number"),
        (["--percentiles", "50,x"], "--percentiles: expected comma-separated numbers"),
        (["--max-concurrency", "0"], "max_concurrency must be a positive integer"),
    ],
)
def test_load_options(tmp_path: Path, data_dir: Path, args: list[str], expected: str) -> None:
    assert expected in one_line(orchestrate("load", str(write(tmp_path, data_dir)), *args, "--no-progress"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("tasks", ["mmlu,foo", "foo"])
def test_unknown_tasks_are_named(tmp_path: Path, data_dir: Path, tasks: str) -> None:
    line = one_line(orchestrate("bench", str(write(tmp_path, data_dir)), "--tasks", tasks, "--no-progress"))
    assert line.startswith("error: --tasks: foo not in this run's tasks (the manifest has: ceval, mmlu)")
    assert not (tmp_path / "runs").exists()


def test_validate_checks_local_files(tmp_path: Path, data_dir: Path) -> None:
    target = {"name": "g", "model": "M", "quantization": "Q8_0", "backend": "llamacpp",
              "launch": {"model_path": "missing.gguf"}}  # fmt: skip
    line = one_line(orchestrate("validate", str(write(tmp_path, data_dir, targets=[target]))))
    assert "targets[0].launch.model_path: no such file" in line
    run = {"name": "in", "data_dir": str(tmp_path / "nowhere")}
    line = one_line(orchestrate("validate", str(write(tmp_path, data_dir, run=run))))
    assert "run.data_dir: no such folder" in line
    # bench refuses the same before it makes a run directory
    line = one_line(orchestrate("bench", str(write(tmp_path, data_dir, targets=[target])), "--no-progress"))
    assert "model file not found" in line and not (tmp_path / "runs").exists()


def test_help_names_every_command_and_the_exit_codes() -> None:
    done = orchestrate("--help")
    assert done.returncode == 0
    for command in ("bench", "load", "report", "gate", "score", "compose", "k8s", "validate"):
        assert command in done.stdout
    assert "4 the run directory cannot be written" in " ".join(done.stdout.split())
    assert "5 the regression gate failed" in " ".join(done.stdout.split())
