"""The Compose lifecycle without Docker: turns planned from a file, run against a scripted Compose
CLI (order, resume, failures, interrupts, --keep-up, strays), the Docker checks against fake
executables, and secrets masked in what Docker prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.compose import ComposeError, ComposeOptions, render_compose
from orchestrator.compose_cli import ComposeCLI, DockerUnavailable, _run
from orchestrator.lifecycle import Lifecycle, Plan, Turn, plan_turns
from orchestrator.run_meta import RunMeta
from orchestrator.secrets import mask_secrets
from orchestrator.store import RunStore


def _doc(**options: Any) -> dict[str, Any]:
    return render_compose(ComposeOptions(backend="vllm", sizes=("0.5b", "7b"), quants=("bf16", "awq"), **options))


def test_turns_follow_the_declared_order_and_bench_each_service_once(tmp_path: Path) -> None:
    doc = _doc()
    plan = plan_turns(doc, tmp_path / "c.yaml", None, 600)
    assert [(t.profile, [s.name for s in t.services]) for t in plan.turns] == [
        ("0.5b", ["qwen2-0.5b-bf16", "qwen2-0.5b-awq"]),
        ("7b", ["qwen2-7b-bf16", "qwen2-7b-awq"]),
    ]
    # Profiles overlapping: a service is benched in the first turn that includes it.
    plan = plan_turns(doc, tmp_path / "c.yaml", ["7b", "awq"], 600)
    assert [(t.profile, [s.name for s in t.services]) for t in plan.turns] == [
        ("7b", ["qwen2-7b-bf16", "qwen2-7b-awq"]),
        ("awq", ["qwen2-0.5b-awq"]),
    ]
    assert plan_turns(doc, tmp_path / "c.yaml", ["7b", "7b", "bf16"], 1).turns[1].services[0].name == "qwen2-0.5b-bf16"
    # Without declared turns: profiles in order of first appearance, each with what is left.
    doc.pop("x-orchestrator")
    turns = plan_turns(doc, tmp_path / "c.yaml", None, 600).turns
    assert [(t.profile, [s.name for s in t.services]) for t in turns] == [
        ("0.5b", ["qwen2-0.5b-bf16", "qwen2-0.5b-awq"]),
        ("bf16", ["qwen2-7b-bf16"]),
        ("all", ["qwen2-7b-awq"]),
    ]
    with pytest.raises(ComposeError, match="no labelled service has profile 13b"):
        plan_turns(doc, tmp_path / "c.yaml", ["13b"], 600)


def test_services_without_profiles_and_unlabelled_ones(tmp_path: Path) -> None:
    doc = _doc()
    svc = doc["services"]["qwen2-7b-awq"]
    del svc["profiles"]  # always enabled: a turn of its own, first
    doc["services"]["proxy"] = {"image": "nginx", "ports": ["80:80"]}  # not ours: never benched
    plan = plan_turns(doc, tmp_path / "c.yaml", None, 600)
    assert plan.turns[0].profile is None and [s.name for s in plan.turns[0].services] == ["qwen2-7b-awq"]
    assert "proxy" not in {s.name for s in plan.services}
    assert plan.turns[0].label == "services without a profile"


def test_plan_round_trips_and_its_lines_say_gpus_and_ports(tmp_path: Path) -> None:
    plan = plan_turns(render_compose(ComposeOptions(backend="llamacpp", sizes=("72b",))), tmp_path / "c.yaml", None, 9)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    lines = plan.lines()
    assert lines[1].startswith("turn 1: profile 72b: 4 services, 8 GPUs; up -d --wait --wait-timeout 9")
    assert "qwen2-72b-fp16: Qwen2-72B-Instruct FP16 on llamacpp (ghcr.io/ggml-org/llama.cpp:server-cuda-b" in lines[2]
    assert lines[2].endswith("GPUs 0,1,2, port 8001") and lines[-1].endswith("GPUs 7, port 8004")
    assert plan.services[0].target()["model_id"] == "Qwen/Qwen2-72B-Instruct"


def test_the_wait_for_health_is_what_the_healthchecks_allow(tmp_path: Path) -> None:
    doc = render_compose(ComposeOptions(backend="llamacpp", sizes=("0.5b", "72b")))
    # The generated healthcheck: a 40 min start period, then 3 retries 5 s apart with a 10 s
    # timeout each: the turn waits that long, and a minute for the containers to be made.
    check = doc["services"]["qwen2-72b-fp16"]["healthcheck"]
    assert (check["start_period"], check["interval"], check["timeout"], check["retries"]) == ("40m", "5s", "10s", 3)
    assert plan_turns(doc, tmp_path / "c.yaml", None).health_timeout == 2400 + 3 * 15 + 5 + 60
    assert plan_turns(doc, tmp_path / "c.yaml", None, 90).health_timeout == 90  # --health-timeout wins
    # The slowest planned service sets it; Docker's own defaults fill what a healthcheck leaves out.
    doc["services"]["qwen2-0.5b-q8_0"]["healthcheck"] = {"test": ["CMD", "true"], "start_period": "1h2m30.5s"}
    assert plan_turns(doc, tmp_path / "c.yaml", ["0.5b"]).health_timeout == round(3750.5 + 3 * 60 + 30 + 60)
    assert plan_turns(doc, tmp_path / "c.yaml", ["72b"]).health_timeout == 2510  # 0.5b is not in this plan
    # No healthcheck (none, disabled, NONE): `up --wait` takes a running container as up.
    small = [svc for name, svc in doc["services"].items() if name.startswith("qwen2-0.5b-")]
    assert len(small) == 4
    for svc, check in zip(small, [{"disable": True}, {"test": ["NONE"]}, {"test": "NONE"}, None], strict=True):
        svc.pop("healthcheck")
        if check is not None:
            svc["healthcheck"] = check
    assert plan_turns(doc, tmp_path / "c.yaml", ["0.5b"]).health_timeout == 1800


def test_compose_durations() -> None:
    from orchestrator.lifecycle import compose_duration

    assert [compose_duration(v) for v in ("40m", "1m30s", "500ms", "1h", "2.5s", 7, "90")] == [
        2400, 90, 0.5, 3600, 2.5, 7, None
    ]  # fmt: skip
    assert compose_duration("5 s") is None and compose_duration("s") is None and compose_duration(True) is None


class FakeCompose:
    """A scripted Compose CLI: which services come up healthy, what each logs; every call kept."""

    version = "2.99.0"

    def __init__(self, broken: set[str] = frozenset(), slow: set[str] = frozenset(), strays: set[str] = frozenset()):  # type: ignore[assignment]
        self.argv = ["docker", "compose"]
        self.broken, self.slow, self.running = set(broken), set(slow), set(strays)
        self.calls: list[tuple[str, ...]] = []
        self.on_up: Any = None

    def command(self, profile: str | None, *args: str) -> list[str]:
        return [*self.argv, "-f", "c.yaml", *(["--profile", profile] if profile else []), *args]

    def up(self, turn: Turn, services: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(("up", str(turn.profile), *services))
        if self.on_up is not None:
            self.on_up()
        self.running |= set(services)
        bad = [s for s in services if s in self.broken]
        self.slow -= set(services) if len(self.calls) > 1 and self.calls[-2][0] == "up" else set()
        return subprocess.CompletedProcess([], 1 if bad else 0, "", f"container {bad[0]}-1 exited (1)" if bad else "")

    def down(self, turn: Turn) -> subprocess.CompletedProcess[str]:
        self.calls.append(("down", str(turn.profile)))
        self.running -= {s.name for s in turn.services}
        return subprocess.CompletedProcess([], 0, "", "")

    def remove(self, services: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(("rm", *services))
        self.running -= set(services)
        return subprocess.CompletedProcess([], 0, "", "")

    def logs(self, service: str) -> str:
        self.calls.append(("logs", service))
        last = "E srv  llama_server: exiting due to model loading error" if service in self.broken else "serving"
        return f"{service}-1  | 2026-12-01T10:00:00.000Z loading\n{service}-1  | 2026-12-01T10:00:01.000Z {last}\n"

    def states(self, services: list[str]) -> dict[str, str]:
        out = {}
        for s in services:
            if s in self.running:
                out[s] = (
                    "exited (1)"
                    if s in self.broken
                    else "running (starting)"
                    if s in self.slow
                    else "running (healthy)"
                )
        return out


def _lifecycle(tmp_path: Path, cli: FakeCompose, keep_up: bool = False) -> tuple[Lifecycle, RunMeta, list[str]]:
    plan = plan_turns(_doc(), tmp_path / "c.yaml", None, 600)
    meta = RunMeta()
    said: list[str] = []
    return Lifecycle(plan, cli, RunStore(tmp_path / "run"), meta, keep_up, said.append), meta, said  # type: ignore[arg-type]


def test_turns_up_bench_logs_down_in_order(tmp_path: Path) -> None:
    cli = FakeCompose()
    life, meta, _ = _lifecycle(tmp_path, cli)
    benched: list[list[str]] = []
    _, failed = life.run(lambda names: benched.append(names) or names, lambda name: 1)
    assert benched == [["qwen2-0.5b-bf16", "qwen2-0.5b-awq"], ["qwen2-7b-bf16", "qwen2-7b-awq"]] and not failed
    assert [c for c in cli.calls if c[0] in ("up", "down")] == [
        ("up", "0.5b", "qwen2-0.5b-bf16", "qwen2-0.5b-awq"), ("down", "0.5b"),
        ("up", "7b", "qwen2-7b-bf16", "qwen2-7b-awq"), ("down", "7b"),
    ]  # fmt: skip
    assert cli.running == set()
    log = (tmp_path / "run" / "servers" / "qwen2-7b-awq.log").read_text()
    assert log.startswith("==== docker compose logs qwen2-7b-awq at ") and "serving" in log
    # Every step is in run.json at once: a killed run says how far it got.
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())["compose"]
    assert [e["event"] for e in on_disk["events"]] == ["up", "healthy", "benched", "down"] * 2
    assert on_disk["cli"] == {"command": "docker compose", "version": "2.99.0"}
    assert json.loads(json.dumps(meta.compose)) == on_disk


def test_resume_skips_complete_turns_and_brings_up_only_what_is_left(tmp_path: Path) -> None:
    cli = FakeCompose()
    life, meta, _ = _lifecycle(tmp_path, cli)
    left = {"qwen2-7b-awq": 3}
    benched: list[list[str]] = []
    life.run(lambda names: benched.append(names) or [], lambda name: left.get(name, 0))
    assert benched == [["qwen2-7b-awq"]]
    assert [c for c in cli.calls if c[0] == "up"] == [("up", "7b", "qwen2-7b-awq")]
    assert (meta.compose["events"][0]["profile"], meta.compose["events"][0]["event"]) == ("0.5b", "skipped")


def test_a_turn_that_never_becomes_healthy_is_failed_and_the_run_goes_on(tmp_path: Path) -> None:
    cli = FakeCompose(broken={"qwen2-0.5b-awq"})
    life, _, said = _lifecycle(tmp_path, cli)
    benched: list[list[str]] = []
    _, failed = life.run(lambda names: benched.append(names) or [], lambda name: 1)
    assert benched == [["qwen2-0.5b-bf16"], ["qwen2-7b-bf16", "qwen2-7b-awq"]]  # the healthy ones still run
    assert [f.name for f in failed] == ["qwen2-0.5b-awq"]
    why = failed[0].failure
    assert "profile 0.5b did not become healthy (exited (1); compose: container qwen2-0.5b-awq-1 exited (1)" in why
    assert "its last words: E srv  llama_server: exiting due to model loading error" in why
    assert why.endswith(f"log: {tmp_path / 'run' / 'servers' / 'qwen2-0.5b-awq.log'}")
    assert ("down", "0.5b") in cli.calls and cli.running == set()
    assert any("qwen2-0.5b-awq not healthy" in s for s in said)


def test_a_service_still_loading_when_another_exits_is_waited_for(tmp_path: Path) -> None:
    cli = FakeCompose(broken={"qwen2-0.5b-awq"}, slow={"qwen2-0.5b-bf16"})
    life, _, _ = _lifecycle(tmp_path, cli)
    benched: list[list[str]] = []
    _, failed = life.run(lambda names: benched.append(names) or [], lambda name: 1)
    assert ("up", "0.5b", "qwen2-0.5b-bf16") in cli.calls  # waited on again, alone
    assert benched[0] == ["qwen2-0.5b-bf16"] and [f.name for f in failed] == ["qwen2-0.5b-awq"]


@pytest.mark.parametrize("keep_up", [False, True])
def test_an_interrupted_bench_takes_its_turn_down_unless_kept_up(tmp_path: Path, keep_up: bool) -> None:
    cli = FakeCompose()
    life, meta, said = _lifecycle(tmp_path, cli, keep_up=keep_up)

    def bench(names: list[str]) -> list[Any]:
        if "qwen2-7b-bf16" in names:
            raise KeyboardInterrupt
        return []

    with pytest.raises(KeyboardInterrupt):
        life.run(bench, lambda name: 1)
    assert ("down", "0.5b") in cli.calls  # an earlier turn is always down: the next needs its GPUs
    assert (("down", "7b") in cli.calls) is not keep_up
    assert cli.running == ({"qwen2-7b-bf16", "qwen2-7b-awq"} if keep_up else set())
    assert ("logs", "qwen2-7b-awq") in cli.calls
    last = meta.compose["events"][-1]
    assert (last["event"], last["detail"]) == (("kept up", "interrupted") if keep_up else ("down", "interrupted"))
    if keep_up:
        assert any("left up (--keep-up): `docker compose -f c.yaml --profile 7b down`" in s for s in said)


def test_keep_up_leaves_only_the_last_turn_running(tmp_path: Path) -> None:
    cli = FakeCompose()
    life, _, _ = _lifecycle(tmp_path, cli, keep_up=True)
    life.run(lambda names: [], lambda name: 1)
    assert cli.running == {"qwen2-7b-bf16", "qwen2-7b-awq"} and ("down", "0.5b") in cli.calls


def test_sigterm_while_a_turn_comes_up_takes_it_down(tmp_path: Path) -> None:
    cli = FakeCompose()
    cli.on_up = lambda: os.kill(os.getpid(), signal.SIGTERM)  # a real signal, mid `up`
    life, _, _ = _lifecycle(tmp_path, cli)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        life.run(lambda names: [], lambda name: 1)
    assert cli.calls[-1] == ("down", "0.5b")
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the caller's again


def test_containers_left_by_a_killed_run_are_removed_before_a_turn(tmp_path: Path) -> None:
    cli = FakeCompose(strays={"qwen2-0.5b-bf16", "qwen2-7b-awq"})
    life, _, said = _lifecycle(tmp_path, cli)
    life.run(lambda names: [], lambda name: 0 if name.startswith("qwen2-0.5b") else 1)
    # 0.5b is complete (skipped), but its container still holds a GPU: removed before 7b comes up.
    assert cli.calls.index(("rm", "qwen2-0.5b-bf16")) < cli.calls.index(("up", "7b", "qwen2-7b-bf16", "qwen2-7b-awq"))
    assert any("left by an earlier run: qwen2-0.5b-bf16" in s for s in said)


def test_a_finished_run_resumed_removes_what_a_kill_left_running(tmp_path: Path) -> None:
    # Killed after its last bench, before its down: every sample is answered, the servers still run.
    cli = FakeCompose(strays={"qwen2-7b-bf16", "qwen2-7b-awq"})
    life, _, _ = _lifecycle(tmp_path, cli)
    life.run(lambda names: [], lambda name: 0)
    assert [c[0] for c in cli.calls] == ["rm"] and cli.running == set()


# ---------------------------------------------------------------------------------------------
# Docker itself, through fake executables
# ---------------------------------------------------------------------------------------------
def _fake_bin(folder: Path, name: str, script: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with nothing Docker on it (and no docker-compose beside this Python)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))  # the fakes are /bin/sh scripts of builtins only
    monkeypatch.setattr(sys, "executable", str(folder / "python"))
    return folder


def test_no_docker_at_all(bare_path: Path) -> None:
    with pytest.raises(DockerUnavailable, match="neither `docker` nor `docker-compose` is installed"):
        ComposeCLI.find("c.yaml")


def test_docker_without_compose_v2_and_compose_v1(bare_path: Path) -> None:
    _fake_bin(bare_path, "docker", "exit 1\n")
    _fake_bin(bare_path, "docker-compose", "exit 1\n")
    with pytest.raises(DockerUnavailable, match="`docker compose` is not available"):
        ComposeCLI.find("c.yaml")
    _fake_bin(bare_path, "docker-compose", "echo 1.29.2\n")
    with pytest.raises(DockerUnavailable, match=r"docker-compose 1\.29\.2 is Compose v1"):
        ComposeCLI.find("c.yaml")
    _fake_bin(bare_path, "docker-compose", "echo v2.40.3\n")
    cli = ComposeCLI.find("c.yaml")
    assert cli.argv == [str(bare_path / "docker-compose")] and cli.version == "2.40.3"
    _fake_bin(bare_path, "docker", 'case "$1" in compose) echo 2.40.3;; *) exit 1;; esac\n')
    assert ComposeCLI.find("c.yaml").argv == ["docker", "compose"]  # the plugin first


def test_daemon_unreachable_is_one_line_and_exit_2(bare_path: Path, tmp_path: Path, capsys: Any) -> None:
    _fake_bin(
        bare_path,
        "docker",
        'case "$1" in compose) echo 2.40.3;; info) echo "Cannot connect to the Docker daemon at '
        'unix:///var/run/docker.sock. Is the docker daemon running?" >&2; exit 1;; esac\n',
    )
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(_doc()))
    code = main(["bench", "--compose", str(file), "--all-profiles", "--run-id", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "the Docker daemon is unreachable: Cannot connect to the Docker daemon" in err
    assert not (Path.cwd() / "runs" / "x").exists()  # nothing started, no run directory


def test_dry_run_prints_the_plan_and_starts_nothing(bare_path: Path, tmp_path: Path, capsys: Any) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(_doc()))
    assert main(["bench", "--compose", str(file), "--profile", "7b,0.5b", "--dry-run", "--run-id", "y"]) == 0
    out = capsys.readouterr().out
    assert out.index("turn 1: profile 7b") < out.index("turn 2: profile 0.5b")
    assert "qwen2-7b-awq: Qwen2-7B-Instruct AWQ on vllm (vllm/vllm-openai:v0.11.0), GPUs 1, port 8004" in out
    assert not (Path.cwd() / "runs" / "y").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--compose", "{file}"], "name the profiles to bring up in turn (--profile 0.5b,7b) or --all-profiles"),
        (["--compose", "{file}", "--profile", "13b"], "no labelled service has profile 13b"),
        (["--compose", "{missing}", "--all-profiles"], "cannot read file"),
        (["{manifest}", "--dry-run"], "--dry-run: prints the turns of a Compose run: give --compose FILE"),
        (["--compose", "{file}", "--all-profiles", "--health-timeout", "0"], "--health-timeout: seconds > 0, not 0"),
    ],
)
def test_bad_compose_invocations_are_one_line(tmp_path: Path, capsys: Any, args: list[str], expected: str) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(_doc()))
    manifest = Path(__file__).resolve().parents[1] / "manifests" / "local.yaml"
    argv = [a.format(file=file, missing=tmp_path / "nope.yaml", manifest=manifest) for a in args]
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_what_docker_prints_is_masked_of_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1234567890")
    monkeypatch.setenv("SOME_KEY", "12345")  # too short to be a credential worth masking
    done = _run(
        [
            sys.executable,
            "-c",
            "import os; print(os.environ['HF_TOKEN'], os.environ['OPENAI_API_KEY'], 'http://u:p@h/')",
        ],
        30,
    )
    assert done.stdout.strip() == "*** *** http://***@h/"
    assert mask_secrets("key 12345 token hf_abcdefghijklmnop") == "key 12345 token ***"
