"""The user's Compose v2 CLI (``docker compose``, else a v2 ``docker-compose``), found and checked,
run with timeouts, its output masked of secrets before it is written or shown. Nothing is passed
to it but the file, profiles and service names."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import UserError
from orchestrator.secrets import mask_secrets

if TYPE_CHECKING:
    from orchestrator.lifecycle import Turn

CHECK_TIMEOUT = 60.0  # `docker compose version`, `docker info`: seconds
DOWN_TIMEOUT = 600.0  # `docker compose down` (stopping a server that holds 4 GPUs takes a while)


class DockerUnavailable(UserError, RuntimeError):
    """No Compose v2 CLI, no docker, or a daemon that does not answer: one line, exit 2."""


# ---------------------------------------------------------------------------------------------
# The Compose CLI
# ---------------------------------------------------------------------------------------------
class ComposeCLI:
    """The user's Compose v2 CLI, for one file."""

    def __init__(self, argv: list[str], file: str, version: str) -> None:
        self.argv = argv  # ["docker", "compose"] or ["/path/docker-compose"]
        self.file = file
        self.version = version

    @classmethod
    def find(cls, file: str) -> ComposeCLI:
        """``docker compose`` (v2), else a v2 ``docker-compose`` on PATH or beside this Python;
        DockerUnavailable naming what is missing."""
        candidates: list[list[str]] = []
        if shutil.which("docker"):
            candidates.append(["docker", "compose"])
        standalone = shutil.which("docker-compose") or shutil.which(
            "docker-compose", path=str(Path(sys.executable).parent)
        )
        if standalone:
            candidates.append([standalone])
        old = None
        for argv in candidates:
            version = _output([*argv, "version", "--short"])
            if version and version.lstrip("v").split(".")[0].isdigit() and int(version.lstrip("v").split(".")[0]) >= 2:
                return cls(argv, file, version.lstrip("v"))
            old = old or (version and f"{' '.join(argv)} {version}")
        if old:
            raise DockerUnavailable(f"{old} is Compose v1; `orchestrate bench --compose` needs Compose v2")
        if not candidates:
            raise DockerUnavailable(
                "neither `docker` nor `docker-compose` is installed: `orchestrate bench --compose` needs Docker "
                "with Compose v2 (the compose plugin)"
            )
        raise DockerUnavailable("`docker compose` is not available (install Docker's Compose v2 plugin)")

    def check_daemon(self) -> str:
        """The engine's version; DockerUnavailable when the daemon does not answer."""
        argv = ["docker", "info", "--format", "{{.ServerVersion}}"] if shutil.which("docker") else [*self.argv, "ls"]
        done = _run(argv, CHECK_TIMEOUT)
        if done.returncode != 0 or (argv[0] == "docker" and not done.stdout.strip()):
            raise DockerUnavailable(f"the Docker daemon is unreachable: {_last_line(done)}")
        return done.stdout.strip() if argv[0] == "docker" else "?"

    def command(self, profile: str | None, *args: str) -> list[str]:
        """A Compose command line for this file and profile."""
        return [*self.argv, "-f", self.file, *(["--profile", profile] if profile else []), *args]

    def up(self, turn: Turn, services: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Start the services and wait until every one is healthy (or fails, or ``timeout`` s)."""
        wait = ["--wait", "--wait-timeout", str(max(1, round(timeout)))]
        return _run(self.command(turn.profile, "up", "-d", *wait, *services), None)

    def down(self, turn: Turn) -> subprocess.CompletedProcess[str]:
        """Stop and remove the turn's containers (and the network Compose made for them)."""
        return _run(self.command(turn.profile, "down", "--remove-orphans"), DOWN_TIMEOUT)

    def remove(self, services: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Stop and remove these services' containers (strays of an earlier, killed run)."""
        return _run(self.command(None, "rm", "--stop", "--force", *services), DOWN_TIMEOUT)

    def logs(self, service: str) -> str:
        """A service's log (timestamps, no colour), masked of secrets."""
        done = _run(self.command(None, "logs", "--no-color", "--timestamps", service), CHECK_TIMEOUT * 5)
        return done.stdout + done.stderr  # masked by _run

    def states(self, services: Sequence[str]) -> dict[str, str]:
        """Each existing container's state (``running (healthy)``, ``exited (1)``) by service."""
        done = _run(self.command(None, "ps", "--all", "--format", "json", *services), CHECK_TIMEOUT)
        out: dict[str, str] = {}
        for line in done.stdout.splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                row = json.loads(line)
                for item in row if isinstance(row, list) else [row]:
                    state = str(item.get("State", "?"))
                    if state == "exited":
                        state += f" ({item.get('ExitCode', '?')})"
                    elif item.get("Health"):
                        state += f" ({item['Health']})"
                    out[str(item.get("Service"))] = state
        return out


def _run(argv: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    """Run a Docker command in a session of its own (a Ctrl-C reaches the orchestrator only, which
    then takes the turn down itself); its output masked of secrets."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, start_new_session=True, check=False
        )
    except FileNotFoundError:
        raise DockerUnavailable(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{' '.join(argv[:3])} did not finish in {timeout:g} s")
    return subprocess.CompletedProcess(argv, done.returncode, mask_secrets(done.stdout), mask_secrets(done.stderr))


def _output(argv: list[str]) -> str | None:
    try:
        done = _run(argv, CHECK_TIMEOUT)
    except DockerUnavailable:
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _healthy(state: str) -> bool:
    return state.startswith("running") and ("(healthy)" in state or "(" not in state)  # no healthcheck: running


def _last_log_line(log: str) -> str:
    """A container log's last line without Compose's ``service-1  | <timestamp>`` prefix."""
    lines = [ln.split("|", 1)[-1].strip() for ln in log.splitlines() if ln.strip()]
    words = lines[-1].split(" ", 1) if lines else [""]
    return words[-1] if len(words) == 2 and words[0][:4].isdigit() and "T" in words[0] else (lines or [""])[-1]


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"
