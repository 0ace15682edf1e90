"""Compose profiles brought up, benched and taken down in turn: a matrix no box serves at once, in
one run directory and one report.

``orchestrate bench --compose FILE --profile 0.5b,7b`` (or ``--all-profiles``) plans one *turn* per
profile: the profile's labelled services not benched in an earlier turn. Each turn is
``docker compose -f FILE --profile P up -d --wait --wait-timeout T SERVICES``, the bench of those
services, ``docker compose logs`` of each into ``servers/<service>.log``, ``docker compose
--profile P down``. A turn whose services never become healthy is recorded as failed (with their
logs) and the next turn goes on. The plan and every step are kept in run.json (``compose``), so
``--resume`` brings up only the services with samples left. Ctrl-C / SIGTERM takes the current
turn down before exiting, unless ``--keep-up`` (which also leaves the last turn up at the end).

The Compose CLI is the user's (``docker compose`` v2, else a v2 ``docker-compose``); nothing is
passed to it but the file, profiles and service names, and what it prints is masked of secrets
before it is written or shown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.compose import BACKENDS, LABEL, ComposeError, host_ports, reserved_gpus
from orchestrator.compose_cli import (
    ComposeCLI,
    _healthy,
    _last_line,
    _last_log_line,
)
from orchestrator.errors import StoreError
from orchestrator.interrupts import terminate_as_interrupt, uninterrupted
from orchestrator.run_meta import RunMeta
from orchestrator.store import RunStore


@dataclass(frozen=True)
class Service:
    """One labelled service of the Compose file: a target of the run."""

    name: str
    model: str
    model_id: str | None
    quantization: str
    backend: str
    url: str
    port: int
    gpus: tuple[str, ...]
    image: str

    def target(self) -> dict[str, Any]:
        """The manifest target entry that benches it."""
        return {
            "name": self.name,
            "model": self.model,
            "model_id": self.model_id,
            "quantization": self.quantization,
            "backend": self.backend,
            "url": self.url,
            **({"gpus": list(self.gpus)} if self.gpus else {}),
        }


@dataclass(frozen=True)
class Turn:
    """One profile brought up: the services benched while it is up (None: services without profiles)."""

    profile: str | None
    services: tuple[Service, ...]

    @property
    def label(self) -> str:
        """How the turn is named in messages."""
        return f"profile {self.profile}" if self.profile else "services without a profile"


@dataclass(frozen=True)
class Plan:
    """The turns of a Compose run, in order, and what each waits for."""

    file: str  # absolute path of the Compose file
    project: str | None  # $COMPOSE_PROJECT_NAME or the file's `name:` (None: Compose names it after the folder)
    turns: tuple[Turn, ...]
    health_timeout: float

    def to_dict(self) -> dict[str, Any]:
        """run.json form."""
        return {
            "file": self.file,
            "project": self.project,
            "health_timeout": self.health_timeout,
            "turns": [{"profile": t.profile, "services": [asdict(s) for s in t.services]} for t in self.turns],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Read back the run.json form."""
        turns = tuple(
            Turn(t["profile"], tuple(Service(**{**s, "gpus": tuple(s["gpus"])}) for s in t["services"]))
            for t in data["turns"]
        )
        return cls(data["file"], data.get("project"), turns, float(data["health_timeout"]))

    @property
    def services(self) -> list[Service]:
        """Every service, in turn order."""
        return [s for t in self.turns for s in t.services]

    def lines(self) -> list[str]:
        """The plan as `--dry-run` prints it."""
        out = [f"compose file: {self.file}" + (f" (project {self.project})" if self.project else "")]
        for i, turn in enumerate(self.turns, 1):
            gpus = sum(len(s.gpus) for s in turn.services)
            out.append(
                f"turn {i}: {turn.label}: {len(turn.services)} services, {gpus} GPUs; "
                f"up -d --wait --wait-timeout {self.health_timeout:g}, bench, logs, down"
            )
            for s in turn.services:
                where = f"GPUs {','.join(s.gpus)}" if s.gpus else "no GPU"
                out.append(f"  {s.name}: {s.model} {s.quantization} on {s.backend} ({s.image}), {where}, port {s.port}")
        return out


def plan_turns(
    doc: dict[str, Any], file: Path, profiles: Sequence[str] | None, health_timeout: float | None = None
) -> Plan:
    """The turns for ``profiles`` in the order given (None: every profile: the file's
    ``x-orchestrator.turns`` when it declares them, else each profile in order of first appearance).
    A service is benched in the first turn that includes it; a profile with nothing new is no turn.
    ``health_timeout`` None: as long as the planned services' own healthchecks allow."""
    services = {n: s for n, s in (doc.get("services") or {}).items() if _ours(s)}
    if not services:
        raise ComposeError(f"{file}: no orchestrator-labelled service with a host port")
    known = list(dict.fromkeys(p for s in services.values() for p in s.get("profiles") or []))
    if profiles is None:
        declared = (doc.get("x-orchestrator") or {}).get("turns")
        order: list[str | None] = list(declared) if isinstance(declared, list) and declared else list(known)
        if any(not s.get("profiles") for s in services.values()):
            order.insert(0, None)
    else:
        unknown = [p for p in profiles if p not in known]
        if unknown:
            raise ComposeError(
                f"{file}: no labelled service has profile {', '.join(unknown)} (profiles: {', '.join(known)})"
            )
        order = list(dict.fromkeys(profiles))
    taken: set[str] = set()
    turns = []
    for profile in order:
        members = [
            n
            for n, s in services.items()
            if n not in taken and (profile in (s.get("profiles") or []) if profile else not s.get("profiles"))
        ]
        if members:
            taken.update(members)
            turns.append(Turn(profile, tuple(_service(n, services[n]) for n in members)))
    if not turns:
        raise ComposeError(f"{file}: the profiles {', '.join(map(str, order))} select no labelled service")
    # Compose's own precedence: COMPOSE_PROJECT_NAME over the file's `name:`.
    project = os.environ.get("COMPOSE_PROJECT_NAME") or doc.get("name")
    if health_timeout is None:
        planned = {s.name for t in turns for s in t.services}
        health_timeout = healthcheck_allowance([services[n] for n in planned])
    return Plan(str(file.resolve()), project, tuple(turns), health_timeout)


# Docker's healthcheck defaults (docker run reference): interval 30 s, timeout 30 s, 3 retries, no start period.
_HEALTH_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "start_period": 0.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
NO_HEALTHCHECK_TIMEOUT = 1800.0  # services without a healthcheck are "up" once running; this only bounds that
HEALTH_MARGIN = 60.0  # container creation, and the last check's own round trip


def compose_duration(value: Any) -> float | None:
    """A Compose duration (``1m30s``, ``40m``, ``500ms``; a YAML number is seconds) in seconds; None if unreadable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _health_seconds(check: dict[str, Any], key: str) -> float:
    """One duration of a healthcheck, Docker's default where it is missing or unreadable."""
    seconds = compose_duration(check.get(key, _HEALTH_DEFAULTS[key]))
    return _HEALTH_DEFAULTS[key] if seconds is None else seconds


def healthcheck_allowance(services: Sequence[Any]) -> float:
    """How long the slowest of these services' healthchecks can take to say healthy or unhealthy:
    its start period, then ``retries`` failed checks a full interval and timeout apart, plus a
    margin. `docker compose up --wait` returns as soon as a container is unhealthy or exits, so
    waiting this long lets the healthcheck decide (a first download of a 72B checkpoint may fill
    most of a 40-minute start period) and never waits for nothing."""
    bounds = []
    for svc in services:
        check = svc.get("healthcheck") if isinstance(svc, dict) else None
        if not isinstance(check, dict) or check.get("disable") or check.get("test") in (["NONE"], "NONE"):
            continue  # no healthcheck: `--wait` takes a running container as up
        interval, timeout, start = (_health_seconds(check, key) for key in ("interval", "timeout", "start_period"))
        retries = check.get("retries", 3)
        retries = retries if isinstance(retries, int) and retries > 0 else 3
        bounds.append(start + retries * (interval + timeout) + interval)
    return round(max(bounds) + HEALTH_MARGIN) if bounds else NO_HEALTHCHECK_TIMEOUT


def _ours(svc: Any) -> bool:
    labels = svc.get("labels") if isinstance(svc, dict) else None
    return isinstance(labels, dict) and labels.get(f"{LABEL}.backend") in BACKENDS and bool(host_ports(svc))


def _service(name: str, svc: dict[str, Any]) -> Service:
    labels = svc["labels"]
    port = host_ports(svc)[0][0]
    return Service(
        name=name,
        model=str(labels.get(f"{LABEL}.model", name)),
        model_id=labels.get(f"{LABEL}.model_id"),
        quantization=str(labels.get(f"{LABEL}.quantization", "?")),
        backend=str(labels[f"{LABEL}.backend"]),
        url=f"http://127.0.0.1:{port}",
        port=port,
        gpus=tuple(reserved_gpus(svc)[0]),
        image=str(svc.get("image", "?")),
    )


# ---------------------------------------------------------------------------------------------
# The turns
# ---------------------------------------------------------------------------------------------
@dataclass
class TurnFailure:
    """A service of a turn that never became healthy: its target's failure."""

    name: str
    failure: str


class Lifecycle:
    """Runs a plan's turns: up, bench, logs, down; what happened is kept in run.json's ``compose``."""

    def __init__(
        self,
        plan: Plan,
        cli: ComposeCLI,
        store: RunStore,
        meta: RunMeta,
        keep_up: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.cli = cli
        self.store = store
        self.meta = meta
        self.keep_up = keep_up
        self.say = say
        record = meta.compose
        record.update(plan.to_dict())
        record["cli"] = {"command": " ".join(cli.argv), "version": cli.version}
        record.setdefault("events", [])

    def run(
        self, bench: Callable[[list[str]], list[Any]], pending: Callable[[str], int]
    ) -> tuple[list[Any], list[TurnFailure]]:
        """Every turn with work left, in order. ``bench(names)`` benches those targets while their
        turn is up; ``pending(name)`` says how much a target has left (samples, a speed phase). Returns the bench
        outcomes and the services that never became healthy."""
        outcomes: list[Any] = []
        failed: list[TurnFailure] = []
        todo = [(t, [s.name for s in t.services if pending(s.name)]) for t in self.plan.turns]
        todo_turns = [(t, names) for t, names in todo if names]
        for turn, names in todo:
            if not names:
                self._event(turn, "skipped", "every sample answered")
        with terminate_as_interrupt():
            for i, (turn, names) in enumerate(todo_turns):
                last = i == len(todo_turns) - 1
                self._clear_strays(keep=set(names))
                try:
                    unhealthy = self._up(turn, names)
                    failed += unhealthy
                    healthy = [n for n in names if n not in {f.name for f in unhealthy}]
                    if healthy:
                        outcomes += bench(healthy)
                    self._event(turn, "benched", ", ".join(healthy) or "nothing healthy")
                except BaseException:  # Ctrl-C, SIGTERM, a full disk: never leave the turn's servers up
                    self._finish(turn, names, interrupted=True)
                    raise
                self._finish(turn, names, interrupted=False, last=last)
            if not self.keep_up:  # a resumed run with nothing left may still find a killed run's containers
                self._clear_strays(keep=set())
        return outcomes, failed

    def _up(self, turn: Turn, names: list[str]) -> list[TurnFailure]:
        self.say(f"{turn.label}: starting {', '.join(names)}")
        self._event(turn, "up", " ".join(names))
        t0 = time.monotonic()
        done = self.cli.up(turn, names, self.plan.health_timeout)
        seconds = round(time.monotonic() - t0, 1)
        if done.returncode == 0:
            self.say(f"{turn.label}: healthy in {seconds:g} s")
            self._event(turn, "healthy", f"{seconds:g} s")
            return []
        why = _last_line(done)
        states = self.cli.states(names)
        # Compose stops waiting at the first container that exits: the others may still be loading.
        starting = [n for n in names if states.get(n, "").startswith("running") and not _healthy(states[n])]
        left = self.plan.health_timeout - (time.monotonic() - t0)
        if starting and left >= 1:
            self.cli.up(turn, starting, left)
            states = self.cli.states(names)
        seconds = round(time.monotonic() - t0, 1)
        unhealthy = [n for n in names if not _healthy(states.get(n, ""))] or names
        self.say(f"{turn.label}: {', '.join(unhealthy)} not healthy after {seconds:g} s: {why}")
        self._event(turn, "failed", f"{' '.join(unhealthy)}: {why}")
        out = []
        for name in unhealthy:
            state = states.get(name, "no container")
            said = _last_log_line(self.cli.logs(name))
            out.append(
                TurnFailure(
                    name,
                    f"{name}: {turn.label} did not become healthy ({state}; compose: {why}"
                    + (f"; its last words: {said}" if said else "")
                    + f"); log: {self.store.server_log(name)}",
                )
            )
        return out

    def _finish(self, turn: Turn, names: list[str], interrupted: bool, last: bool = False) -> None:
        """Logs of the turn's services into servers/, then down (unless kept up)."""
        with uninterrupted():
            for name in names:
                self._save_log(name)
            if self.keep_up and (interrupted or last):
                self.say(f"{turn.label}: left up (--keep-up): `{' '.join(self.cli.command(turn.profile, 'down'))}`")
                self._event(turn, "kept up", "interrupted" if interrupted else "last turn")
                return
            done = self.cli.down(turn)
            if done.returncode != 0:
                self.say(f"{turn.label}: down failed: {_last_line(done)}")
            self._event(turn, "down" if done.returncode == 0 else "down failed", "interrupted" if interrupted else "")

    def _clear_strays(self, keep: set[str]) -> None:
        """Containers of this plan's other services (an earlier run was killed before its down):
        removed, so that the next turn has its GPUs and ports."""
        others = [s.name for s in self.plan.services if s.name not in keep]
        strays = [n for n in self.cli.states(others) if n in others]
        if strays:
            self.say(f"removing containers left by an earlier run: {', '.join(strays)}")
            with uninterrupted():
                self.cli.remove(strays)

    def _save_log(self, name: str) -> None:
        text = self.cli.logs(name)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        end = "\n" if text and not text.endswith("\n") else ""
        self.store.append_server_log(name, f"==== docker compose logs {name} at {stamp} ====\n{text}{end}")

    def _event(self, turn: Turn, event: str, detail: str) -> None:
        """One step of the lifecycle, kept in run.json at once (a killed run still says how far it got)."""
        self.meta.compose["events"].append(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "profile": turn.profile,
                "event": event,
                "detail": detail,
            }
        )
        with contextlib.suppress(StoreError):  # the bench's own writes report a full disk
            self.store.write_meta(self.meta)
