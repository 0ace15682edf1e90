"""A full disk, a read-only disk and a missing folder: one line, exit 4, nothing on disk lost.

Real file systems: a tiny tmpfs fills up (ENOSPC) and a read-only tmpfs refuses writes (EROFS).
Mounting needs root (as these machines and CI run); elsewhere the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.store import read_records
from tests.support.servers import free_port, wait_http

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "support" / "fake_llama_python.py"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """An OpenAI-compatible server answering "B" (non-streaming), in a process of its own."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE), "-m", "llama_cpp.server", "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    points: list[Path] = []
    yield points
    for p in points:
        subprocess.run(["umount", "-l", str(p)], check=False)


def manifest(tmp_path: Path, url: str, data_dir: Path, output_dir: Path, limit: int) -> Path:
    data = {
        "run": {"name": "disk", "output_dir": str(output_dir), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": limit, "shots": 0}},
        "generation": {"stream": False},
        "client": {"concurrency": 8},
        "targets": [{"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "url": url}],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "bench", *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_full_disk_stops_the_run_with_one_line_and_loses_nothing(
    tmp_path: Path, server: str, data_dir: Path, mounts: list[Path]
) -> None:
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=300k")
    mounts.append(disk)
    path = manifest(tmp_path, server, data_dir, disk, limit=600)
    done = bench(str(path), "--run-id", "r")
    assert done.returncode == 4, done.stderr
    line = one_error_line(done)
    assert "No space left on device" in line and "--resume" in line
    run = disk / "r"
    samples = run / "samples" / "t" / "mmlu.qwen@2.jsonl"
    assert samples.read_bytes().endswith(b"\n")  # no torn record
    records = list(read_records(samples))
    assert 0 < len(records) < 600
    assert all(r["error"] is None for r in records)
    assert f"{len(records)} answers of this session are on disk" in line
    json.loads((run / "run.json").read_text())  # whole, whatever it could say

    # Room again: resume sends only what is missing; every sample once.
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    again = bench("--resume", str(run))
    assert again.returncode == 0, again.stderr
    records = list(read_records(samples))
    assert len(records) == 600 and len({r["id"] for r in records}) == 600
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert sessions[-1]["status"] == "done"


def test_read_only_output_dir_is_refused_before_sending(
    tmp_path: Path, server: str, data_dir: Path, mounts: list[Path]
) -> None:
    disk = tmp_path / "ro"
    mount_tmpfs(disk, "size=1m,ro")
    mounts.append(disk)
    done = bench(str(manifest(tmp_path, server, data_dir, disk, limit=5)), "--run-id", "r")
    assert done.returncode == 4
    assert "Read-only file system" in one_error_line(done)
    assert "run dir:" not in done.stderr  # refused before the run started


def test_output_dir_that_cannot_exist_is_refused(tmp_path: Path, server: str, data_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = bench(str(manifest(tmp_path, server, data_dir, blocker / "runs", limit=5)), "--run-id", "r")
    assert done.returncode == 4
    assert "cannot write into" in one_error_line(done)


@pytest.mark.parametrize(("limits", "capped"), [("120:120", True), ("120:8192", False)], ids=["hard", "soft"])
def test_open_file_limit_is_raised_or_the_concurrency_capped(
    tmp_path: Path, server: str, data_dir: Path, limits: str, capped: bool
) -> None:
    """A low RLIMIT_NOFILE (prlimit on the child) against 300 requests in flight: no EMFILE, no
    answer lost; the soft limit is raised when the hard one allows, else the concurrency capped."""
    path = manifest(tmp_path, server, data_dir, tmp_path / "runs", limit=400)
    data = yaml.safe_load(path.read_text())
    data["client"]["concurrency"] = 300
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        ["prlimit", f"--nofile={limits}", sys.executable, "-m", "orchestrator.cli", "bench", str(path),
         "--run-id", "r", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    records = list(read_records(tmp_path / "runs" / "r" / "samples" / "t" / "mmlu.qwen@2.jsonl"))
    assert len(records) == 400 and all(r["error"] is None for r in records)
    notes = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())["sessions"][-1]["notes"]
    if capped:
        assert "concurrency capped to 40" in done.stderr and any("capped to 40" in n for n in notes)
    else:
        assert "open-file limit raised from 120 to 380" in " ".join(notes)
