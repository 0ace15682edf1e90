"""`orchestrate bench`: one bench session, owned by ``BenchSession`` from the manifest (or the run
it resumes) to the exit code: credentials restored, run.json's session entry, the targets'
outcomes, a disk that stops the run, and the one error threshold (the runner's, which stops a
target once its errors pass it; the exit code follows the outcomes)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from orchestrator.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    console,
    data_dir_of,
    error,
    git_sha,
    now,
    out,
    split,
    tokenizer_path,
    versions,
)
from orchestrator.errors import StoreError
from orchestrator.footprint import merge
from orchestrator.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
    read_manifest_data,
    with_overrides,
)
from orchestrator.records import RECORD_SCHEMA
from orchestrator.registry import TASKS
from orchestrator.run_meta import RunMeta, ServerFacts
from orchestrator.secrets import is_redacted, redact
from orchestrator.setups import run_setup_version

if TYPE_CHECKING:  # imported when the command runs (fast --help)
    from orchestrator.compose_cli import ComposeCLI
    from orchestrator.lifecycle import Plan
    from orchestrator.runner import Runner, TargetOutcome
    from orchestrator.store import RunStore


@dataclass
class BenchSession:
    """One `orchestrate bench` session: what it runs (manifest, store, run.json, the Compose plan),
    the runner, and what came of it."""

    args: argparse.Namespace
    manifest: Manifest
    store: RunStore
    meta: RunMeta
    plan: Plan | None
    outcomes: list[TargetOutcome] = field(default_factory=list)

    @classmethod
    def open(cls, args: argparse.Namespace) -> BenchSession:
        """The session of a new run or of the run it resumes (bad input: one line, exit 2)."""
        return cls(args, *_load_for_bench(args))

    def prepare(self) -> Runner:
        """Data, tasks and models located before the run exists, the runner built and this
        session entered in run.json (nothing is sent to a run directory that cannot take records)."""
        from orchestrator.llamacpp import resolve_model
        from orchestrator.logs import LOG_NAME, route_logs
        from orchestrator.progress import RichProgress
        from orchestrator.runner import Runner
        from orchestrator.tasks import SETUP_VERSIONS, manifest_tasks

        args, manifest, meta, store = self.args, self.manifest, self.meta, self.store
        # A resumed run reads the data it was started with.
        data_dir = data_dir_of(manifest, args.data_dir, meta if args.resume else None)
        tasks = manifest_tasks(manifest, data_dir)
        # Models are located (or downloaded) before the run exists: a missing file or an unreachable
        # Hub is one line and exit 2, not a run directory full of failed targets.
        model_paths = {
            t.name: resolve_model(t.launch, manifest.resolve_path) for t in manifest.targets if t.launch is not None
        }
        self.progress = RichProgress(not args.no_progress, console)
        # A resumed run measures again only the speed phases no session finished.
        speed_done = [name for name, facts in meta.servers.items() if (facts.speed_phase or {}).get("status") == "done"]
        runner = Runner(
            manifest,
            list(tasks),
            store,
            self.progress,
            tokenizer_path(manifest),
            model_paths=model_paths,
            speed_done=speed_done,
        )
        if args.gpu or args.bandwidth_gbs:
            meta.roofline_weights = _weights_for_roofline(manifest, model_paths, args)
        meta.run_id = meta.run_id or store.root.name
        meta.created_at = meta.created_at or now()
        meta.manifest = redact(manifest.to_dict())
        if manifest.source.endswith((".yaml", ".yml")):
            meta.manifest_path = str(Path(manifest.source).resolve())
        meta.data_dir = None if data_dir is None else str(data_dir)
        meta.setup = {"name": manifest.run.setup, "version": SETUP_VERSIONS[manifest.run.setup]}
        # The newest record schema in the run (a resumed run of schema 1 appends schema-2 records; the
        # reader takes both).
        meta.record_schema = RECORD_SCHEMA
        meta.versions = versions()
        meta.git_sha = git_sha()
        meta.samples = {name: len(s) for name, s in runner.samples.items()}
        self.entry: dict[str, Any] = {"started_at": now(), "ended_at": None, "status": "running", "argv": sys.argv[1:]}
        meta.sessions.append(self.entry)
        store.check_writable()
        store.write_meta(meta)
        route_logs(store.root / LOG_NAME)  # libraries' log lines: the run's log, never the terminal
        return runner

    def run(self, runner: Runner, compose: ComposeCLI | None) -> int | None:
        """Every target's samples; run.json updated whatever happens. An exit code when the run
        did not finish (interrupted, the disk), else None."""
        import asyncio

        from orchestrator.runtime import run_async

        store, meta = self.store, self.meta
        console.print(f"run dir: [bold]{store.root}[/]")
        status = "interrupted"
        cpu0 = time.process_time()
        disk: StoreError | None = None
        try:
            with self.progress.bars:
                if self.plan is not None and compose is not None:
                    self.outcomes = _bench_in_turns(self.plan, compose, runner, store, meta, self.args.keep_up)
                else:
                    self.outcomes = run_async(_bench_async(runner))
            status = "failed" if any(o.failure for o in self.outcomes) else "done"
        except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the main task
            console.print(
                "[yellow]interrupted: answered samples are on disk; resume with "
                f"`orchestrate bench --resume {store.root}`"
            )
            return EXIT_INTERRUPTED
        except StoreError as exc:
            status, disk = "disk error", exc
        finally:
            if runner.notes:
                self.entry["notes"] = runner.notes
            try:
                store.close()
            except StoreError as exc:
                disk = disk or exc
            _record_outcomes(meta, self.outcomes)
            self.entry["ended_at"] = now()
            self.entry["status"] = status
            self.entry["client_cpu_s"] = round(time.process_time() - cpu0, 3)  # is the client ever the bottleneck?
            try:
                store.write_meta(meta)
            except StoreError:
                if disk is None:
                    raise
                disk.meta_unwritten = True  # type: ignore[attr-defined]
        return None if disk is None else _disk_failure(disk, runner, store)

    def finish(self, runner: Runner) -> int:
        """The report, its tables, the notes, and the exit code: 3 when a target failed (its
        server, or its errors past the threshold), else 0."""
        from orchestrator.report import render_published, render_table, write_report

        report = write_report(self.store.root)
        out().print(render_table(report))
        for published in render_published(report):
            out().print(published)
        console.print(f"report: {self.store.root / 'report.md'}")
        for note in runner.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
        failed = [o for o in self.outcomes if o.failure]
        for o in failed:
            error(o.failure or "")
        return EXIT_FAILED if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a manifest's tasks against its targets (and, with --gate, judge the run)."""
    from orchestrator.cli.gate import gate_config, run_gate

    gate = gate_config(args) if args.gate else None  # a bad limit: one line, exit 2, before anything is sent
    session = BenchSession.open(args)
    compose = None
    if session.plan is not None:
        from orchestrator.compose_cli import ComposeCLI

        if args.dry_run:  # the plan only: nothing is started, no run directory made
            for line in session.plan.lines():
                out().print(line, highlight=False)
            return 0
        compose = ComposeCLI.find(session.plan.file)  # no Compose v2 or no daemon: one line, exit 2, before the run
        compose.check_daemon()
        if not Path(session.plan.file).is_file():
            raise ManifestError(session.plan.file, "", "the Compose file of this run is gone")
    elif args.dry_run:
        raise ManifestError("orchestrate bench", "--dry-run", "prints the turns of a Compose run: give --compose FILE")
    runner = session.prepare()
    stopped = session.run(runner, compose)
    if stopped is not None:
        return stopped
    code = session.finish(runner)
    if gate is not None:
        judged = run_gate(session.store.root, gate, args.baseline, args.junit)
        code = code or judged  # a failed target's code first: the gate judged what there was
    return code


def _load_for_bench(args: argparse.Namespace) -> tuple[Manifest, RunStore, RunMeta, Plan | None]:
    """The run's manifest, store and run.json, and the Compose plan when its servers are brought up in turns."""
    from orchestrator.store import RunStore
    from orchestrator.tasks import SETUP_VERSIONS

    plan = None
    if args.resume:
        run_dir = Path(args.resume)
        if not RunStore(run_dir).read_meta():
            raise ManifestError(str(run_dir), "", "not a run directory (no run.json) to resume")
        meta = RunStore(run_dir).require_meta()  # refuses records of a newer schema
        made_with, current = run_setup_version(meta), SETUP_VERSIONS.get(meta.manifest["run"]["setup"])
        if made_with != current:
            raise ManifestError(
                str(run_dir),
                "setup",
                f"made with {made_with}, and this orchestrator runs {current}: the protocols differ, so the run "
                "cannot be continued (start a new one; `orchestrate report` still renders this one)",
            )
        if args.manifest:
            manifest = load_manifest(args.manifest)
        else:
            manifest = parse_manifest(meta.manifest, meta.manifest_path or str(run_dir / "run.json"))
            manifest = _restore_credentials(manifest, meta, run_dir)
        if meta.compose:
            from orchestrator.lifecycle import Plan

            plan = Plan.from_dict(meta.compose)
    else:
        if args.compose:
            manifest, plan = _manifest_from_compose(args)
        elif args.manifest:
            manifest = load_manifest(args.manifest)
        else:
            raise ManifestError("orchestrate bench", "", "give a manifest, --compose FILE, or --resume RUN_DIR")
        run_id = args.run_id or f"{manifest.run.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        run_dir = manifest.resolve_path(manifest.run.output_dir) / run_id
        meta = RunStore(run_dir).read_meta() or RunMeta()  # a run id used again resumes it
    manifest = with_overrides(
        manifest,
        limit=args.limit,
        concurrency=args.concurrency,
        tasks=args.tasks.split(",") if args.tasks else None,
        backend=args.backend,
        noise_floor=args.noise_floor,
        speed_phase=False if args.no_speed_phase else None,
    )
    return manifest, RunStore(run_dir), meta, plan


def _restore_credentials(manifest: Manifest, meta: RunMeta, run_dir: Path) -> Manifest:
    """run.json keeps no credentials: a resumed target whose URL had some takes its URLs from the
    manifest file the run was started from (re-read, so ${VAR}s are expanded again), when that
    file still describes the same target; otherwise one line says how to resume."""
    if not any(is_redacted(u) for t in manifest.targets for u in (t.url, *t.urls) if u):
        return manifest
    path = meta.manifest_path
    original = {t.name: t for t in load_manifest(path).targets} if path and Path(path).is_file() else {}
    targets = []
    for i, t in enumerate(manifest.targets):
        if any(is_redacted(u) for u in (t.url, *t.urls) if u):
            o = original.get(t.name)
            if o is None or redact(o.url) != t.url or redact(list(o.urls)) != list(t.urls):
                raise ManifestError(
                    str(run_dir),
                    f"targets[{i}].url",
                    f"run.json keeps no credentials and the manifest the run was started from ({path}) is gone or "
                    f"changed: resume with `orchestrate bench --resume {run_dir} MANIFEST`",
                )
            t = dataclasses.replace(t, url=o.url, urls=o.urls)
        targets.append(t)
    return dataclasses.replace(manifest, targets=tuple(targets))


def _manifest_from_compose(args: argparse.Namespace) -> tuple[Manifest, Plan | None]:
    """Targets from a Compose file's labelled services in the chosen profiles, and the turns that
    bring them up (None with --running: they are up already); the default tasks on all of them,
    or the manifest's."""
    from orchestrator.compose import ComposeError, load_compose
    from orchestrator.lifecycle import plan_turns

    path = Path(args.compose)
    if args.health_timeout is not None and not args.health_timeout > 0:  # also NaN
        raise ManifestError("orchestrate bench", "--health-timeout", f"seconds > 0, not {args.health_timeout:g}")
    profiles = [p for value in args.profile or [] for p in split(value)]
    if not profiles and not args.all_profiles and not args.running:
        raise ComposeError(f"{path}: name the profiles to bring up in turn (--profile 0.5b,7b) or --all-profiles")
    everything = args.all_profiles or not profiles
    plan = plan_turns(load_compose(path), path, None if everything else profiles, args.health_timeout)
    label = "all" if args.all_profiles else "-".join(profiles)
    # One server per GPU: measure a turn's servers side by side (each is healthy before it starts).
    client = {"concurrency": 64, "targets_in_parallel": True, "health_timeout": plan.health_timeout}
    targets = [s.target() for s in plan.services]
    turns = None if args.running else plan
    if args.manifest:  # its run, tasks, generation and client settings; the Compose file's targets
        data = read_manifest_data(args.manifest)
        if isinstance(data, dict):
            data = {**data, "client": {**client, **(data.get("client") or {})}, "targets": targets}
        return parse_manifest(data, args.manifest), turns
    data = {
        "run": {"name": f"{path.stem}-{label}", "output_dir": str(Path.cwd() / "runs")},
        "tasks": {name: {} for name in TASKS},
        "client": client,
        "targets": targets,
    }
    return parse_manifest(data, str(path)), turns


async def _bench_async(runner: Runner, only: list[str] | None = None) -> list[TargetOutcome]:
    from orchestrator.interrupts import terminate_cancels

    # SIGTERM (docker stop, kubectl delete) ends the run like Ctrl-C: in-flight samples are dropped.
    async with terminate_cancels():
        return await runner.run(only)


def _record_outcomes(meta: RunMeta, outcomes: list[TargetOutcome]) -> None:
    """Each target's server facts and, if it stopped early, why (for its row in the report; a later
    session that completes it clears the reason)."""
    failures = meta.failures
    for o in outcomes:
        if o.server:
            # What this session found on top of what earlier ones did (a session that only measured
            # the speed phase keeps the accuracy pass's counters).
            old = meta.server(o.name)
            meta.servers[o.name] = ServerFacts.from_json({**old.to_json(), **o.server})
            if old.footprint is not None and "footprint" in o.server:
                meta.servers[o.name].footprint = merge(old.footprint, meta.servers[o.name].footprint)
        if o.failure:
            failures[o.name] = o.failure
        else:
            failures.pop(o.name, None)


def _bench_in_turns(
    plan: Plan, compose: ComposeCLI, runner: Runner, store: RunStore, meta: RunMeta, keep_up: bool
) -> list[TargetOutcome]:
    """The Compose turns: each profile brought up, benched, its logs saved, taken down."""
    from orchestrator.lifecycle import Lifecycle
    from orchestrator.runner import TargetOutcome
    from orchestrator.runtime import run_async

    def say(text: str) -> None:
        console.print(f"[cyan]compose:[/] {escape(text)}", highlight=False)

    def bench(names: list[str]) -> list[TargetOutcome]:
        outcomes = run_async(_bench_async(runner, names))
        # Kept at once: a later turn interrupted or killed must not lose what this one measured.
        _record_outcomes(meta, outcomes)
        store.write_meta(meta)
        return outcomes

    lifecycle = Lifecycle(plan, compose, store, meta, keep_up=keep_up, say=say)
    outcomes, unhealthy = lifecycle.run(bench, runner.pending)
    return [*outcomes, *(TargetOutcome(f.name, failure=f.failure) for f in unhealthy)]


def _weights_for_roofline(manifest: Manifest, model_paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """run.json's roofline settings: the bandwidth, the GPUs per server, and each target's weight
    bytes (a managed GGUF from its file, another from its folder or the Hub's file sizes; what
    cannot be sized is None and said why). The report sets each row's batch-1 decode against them."""
    from orchestrator.roofline import bandwidth, weight_bytes

    bw = bandwidth(args.gpu, args.bandwidth_gbs)  # an unknown GPU: one line, exit 2
    weights: dict[str, int | None] = {}
    why: dict[str, str] = {}
    for t in manifest.targets:
        path = model_paths.get(t.name)
        source = str(path) if path is not None else t.model_id
        if source is None:
            weights[t.name], why[t.name] = None, "no model_id or model file to size the weights from"
            continue
        try:
            weights[t.name] = weight_bytes(source)
        except Exception as exc:  # the Hub unreachable, a gated repo: the row's roofline is n/a
            weights[t.name], why[t.name] = None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return {"bandwidth_gbs": bw, "gpus": args.gpus_per_target, "weight_bytes": weights, "unsized": why}


def _disk_failure(exc: StoreError, runner: Runner, store: RunStore) -> int:
    """One line for a run the disk stopped: what is safe on disk, what will be sent again."""
    meta_note = "; run.json could not be updated either" if getattr(exc, "meta_unwritten", False) else ""
    error(
        f"{exc}; {runner.written} answers of this session are on disk, {runner.unwritten} in flight "
        f"were not written and will be sent again by `orchestrate bench --resume {store.root}` once there is room"
        f"{meta_note}"
    )
    return exc.exit_code
