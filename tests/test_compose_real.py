"""The Compose lifecycle on a real Docker Engine: containers of llama.cpp's server brought up,
benched, logged and taken down profile by profile.

The Compose file is made by `orchestrate compose --backend llamacpp` for two sizes (two profiles,
two GGUF quantizations each); the only test-specific parts are its options: the image (Debian
plus the suite's llama-server, built offline), CPU instead of GPU reservations, the host's
network, and a folder of GGUF files (the tiny model's, under the Hub's file names). Each test
runs `orchestrate bench` as a user would (a subprocess) under a project name of its own, and
checks that no container of it is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.store import read_records
from tests.conftest import cache_dir
from tests.support.docker_engine import Unavailable, engine, llama_image

pytestmark = pytest.mark.real_server
REPO = Path(__file__).resolve().parents[1]
SIZES = {"0.5b": "0_5b", "1.5b": "1_5b"}
QUANTS = {"fp16": "f16", "q8_0": "q8_0"}  # Hub file name -> the tiny model's file
SERVICES = [f"qwen2-{size}-{quant}" for size in SIZES for quant in QUANTS]
LIMIT = 6
SECRET = "hf_orchestratorTestSecret0123456789"


@pytest.fixture(scope="module")
def docker() -> Iterator[dict[str, str]]:
    """A running Docker Engine (started here when none is); skipped where Docker cannot run,
    failed instead when $ORCHESTRATOR_REQUIRE_DOCKER is set (.ci/run: these machines can)."""
    context = engine()
    try:
        env = context.__enter__()
    except Unavailable as exc:
        if os.environ.get("ORCHESTRATOR_REQUIRE_DOCKER"):
            pytest.fail(f"Docker is required here: {exc}")
        pytest.skip(f"Docker cannot run here: {exc}")
    try:
        yield env
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def image(docker: dict[str, str]) -> str:
    try:
        return llama_image(docker, cache_dir())
    except Unavailable as exc:
        if os.environ.get("ORCHESTRATOR_REQUIRE_DOCKER"):
            pytest.fail(f"the test image cannot be built: {exc}")
        pytest.skip(f"the test image cannot be built: {exc}")


def _free_ports(n: int) -> int:
    """The first of ``n`` consecutive free TCP ports on 127.0.0.1."""
    for base in range(20000 + os.getpid() % 1000 * 20, 60000, 50):
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def _orchestrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )


class Setup:
    """One test's Compose file, manifest, project and environment."""

    def __init__(self, root: Path, docker: dict[str, str], image: str, tiny_model: Path, data_dir: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.models.mkdir()
        for size, file_size in SIZES.items():
            del size
            for hub, tiny in QUANTS.items():
                shutil.copyfile(
                    tiny_model / f"tiny-qwen2-{tiny}.gguf", self.models / f"qwen2-{file_size}-instruct-{hub}.gguf"
                )
        self.project = f"orch-test-{root.name.lower().replace('_', '-')}"[:60]
        self.env = {**docker, "COMPOSE_PROJECT_NAME": self.project, "HF_TOKEN": SECRET}
        self.file = root / "compose.yaml"
        made = _orchestrate(
            self.env,
            "compose", "--backend", "llamacpp", "--sizes", ",".join(SIZES), "--quants", ",".join(QUANTS),
            "--image", image, "--cpu", "--network-host", "--model-dir", str(self.models), "--parallel", "2",
            "--first-port", str(_free_ports(len(SERVICES))), "-o", str(self.file),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        self.manifest = root / "manifest.yaml"
        self.manifest.write_text(
            yaml.safe_dump(
                {
                    "run": {"name": "compose", "output_dir": str(root / "runs"), "data_dir": str(data_dir)},
                    "tasks": {"mmlu": {"limit": LIMIT, "max_tokens": 8}, "ceval": {"limit": LIMIT, "max_tokens": 8}},
                    "client": {"concurrency": 2},
                    "speed_phase": {
                        "requests": 4,
                        "batch1_requests": 2,
                        "input_tokens": 32,
                        "output_tokens": 8,
                        "duration": 5,
                    },
                    "targets": [],
                }
            )
        )

    def bench_args(self, run_id: str, *extra: str) -> list[str]:
        return [
            "bench", str(self.manifest), "--compose", str(self.file), "--run-id", run_id,
            "--health-timeout", "120", "--no-progress", *extra,
        ]  # fmt: skip

    def start(self, run_id: str, victim: str, records: int) -> subprocess.Popen[str]:
        """`orchestrate bench --all-profiles` in the background, once ``victim``'s MMLU file holds
        ``records`` records (or the run ended, or 300 s passed)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *self.bench_args(run_id, "--all-profiles")],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        path = self.root / "runs" / run_id / "samples" / victim / "mmlu.qwen@2.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.read_text().count("\n") >= records:
                break
            time.sleep(0.05)  # a poll's pace, under the deadline
        return proc

    def containers(self) -> list[str]:
        done = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}", "--format",
             "{{.Names}} {{.State}}"],
            env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.split("\n")[:-1]

    def down(self) -> None:
        subprocess.run(
            ["docker", "compose", "-f", str(self.file), "--profile", "all", "down", "--remove-orphans"],
            env=self.env, capture_output=True, timeout=300, check=False,
        )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path, docker: dict[str, str], image: str, tiny_model: Path, data_dir: Path) -> Iterator[Setup]:
    s = Setup(tmp_path, docker, image, tiny_model, data_dir)
    try:
        yield s
    finally:
        s.down()  # whatever a failed assertion left


def _report(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "report.json").read_text()))


def _ids(run_dir: Path, target: str, task: str) -> list[str]:
    return [r["id"] for r in read_records(run_dir / "samples" / target / f"{task}.qwen@2.jsonl")]


def _no_secret_in(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_all_profiles_in_turn_into_one_report(setup: Setup) -> None:
    done = _orchestrate(setup.env, *setup.bench_args("all", "--all-profiles"))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = setup.root / "runs" / "all"
    report = _report(run_dir)
    rows = {r["target"]: r for r in report["rows"]}
    assert sorted(rows) == sorted(SERVICES)
    for name, row in rows.items():
        assert row["failure"] is None and row["errors"] == 0, name
        assert {task: t["n"] for task, t in row["tasks"].items()} == {"mmlu": LIMIT, "ceval": LIMIT}, name
        assert row["backend"] == "llamacpp" and row["server_version"].startswith("llama-server b"), name
    # Deltas within each model, as if all four had run together: each Q8_0 row against its model's FP16.
    for size in SIZES:
        q8 = rows[f"qwen2-{size}-q8_0"]
        assert q8["model"] == f"Qwen2-{size.upper()}-Instruct"
        assert q8["reference"] == f"qwen2-{size}-fp16" and q8["comparison"]["tasks"]["mmlu"]["n"] == LIMIT
    # One profile at a time: the first is down before the second comes up.
    meta = json.loads((run_dir / "run.json").read_text())
    steps = [(e["profile"], e["event"]) for e in meta["compose"]["events"]]
    assert steps == [
        ("0.5b", "up"), ("0.5b", "healthy"), ("0.5b", "benched"), ("0.5b", "down"),
        ("1.5b", "up"), ("1.5b", "healthy"), ("1.5b", "benched"), ("1.5b", "down"),
    ]  # fmt: skip
    for name in SERVICES:  # each server's own log, from `docker compose logs`
        log = (run_dir / "servers" / f"{name}.log").read_text()
        assert f"==== docker compose logs {name}" in log and "llama_server: model loaded" in log
    assert setup.containers() == []
    assert sorted(meta["servers"]) == sorted(SERVICES)
    _no_secret_in(run_dir)  # HF_TOKEN went to the containers' environment, never into a file
    assert SECRET not in done.stdout + done.stderr


def test_kill_mid_profile_then_resume_finishes_without_duplicates(setup: Setup) -> None:
    run_dir = setup.root / "runs" / "killed"
    proc = setup.start("killed", "qwen2-0.5b-fp16", records=2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(_ids(run_dir, "qwen2-0.5b-fp16", "mmlu")) < LIMIT  # killed mid-profile
    # kill -9 leaves the turn's containers running; the resume takes them over and then down.
    assert any("0.5b" in c and "running" in c for c in setup.containers())
    done = _orchestrate(setup.env, "bench", "--resume", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in SERVICES:
        for task in ("mmlu", "ceval"):
            ids = _ids(run_dir, name, task)
            assert len(ids) == len(set(ids)) == LIMIT, (name, task, ids)
    rows = {r["target"]: r for r in _report(run_dir)["rows"]}
    assert all(r["failure"] is None and r["tasks"]["mmlu"]["n"] == LIMIT for r in rows.values())
    assert setup.containers() == []


def test_a_profile_that_dies_at_start_is_failed_and_the_other_is_benched(setup: Setup) -> None:
    (setup.models / "qwen2-1_5b-instruct-fp16.gguf").unlink()  # its server exits: no such model file
    done = _orchestrate(setup.env, *setup.bench_args("broken", "--all-profiles"))
    assert done.returncode == 3, done.stderr[-3000:]
    run_dir = setup.root / "runs" / "broken"
    rows = {r["target"]: r for r in _report(run_dir)["rows"]}
    for name in ("qwen2-0.5b-fp16", "qwen2-0.5b-q8_0", "qwen2-1.5b-q8_0"):
        assert rows[name]["failure"] is None and rows[name]["tasks"]["mmlu"]["n"] == LIMIT, name
    failure = rows["qwen2-1.5b-fp16"]["failure"]
    assert "profile 1.5b did not become healthy" in failure and "exited (1)" in failure, failure
    assert "model" in failure  # llama-server's last words: it could not load the model
    log = (run_dir / "servers" / "qwen2-1.5b-fp16.log").read_text()
    assert "failed to load model" in log
    assert "error: qwen2-1.5b-fp16: profile 1.5b did not become healthy" in done.stderr
    assert setup.containers() == []


def test_sigterm_takes_the_profile_down_and_keeps_what_earlier_ones_measured(setup: Setup) -> None:
    run_dir = setup.root / "runs" / "stopped"
    proc = setup.start("stopped", "qwen2-1.5b-q8_0", records=1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert setup.containers() == []
    meta = json.loads((run_dir / "run.json").read_text())
    events = meta["compose"]["events"]
    assert (events[-1]["profile"], events[-1]["event"], events[-1]["detail"]) == ("1.5b", "down", "interrupted")
    assert (run_dir / "servers" / "qwen2-1.5b-q8_0.log").is_file()
    # The first turn's server facts (version, slots, client CPU) were kept when it ended.
    for name in ("qwen2-0.5b-fp16", "qwen2-0.5b-q8_0"):
        assert meta["servers"][name]["version"].startswith("llama-server b") and "client" in meta["servers"][name]
