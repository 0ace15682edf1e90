"""orchestrate: measure what quantization costs an LLM on real inference servers.

Commands: bench, load, report, score, compose, k8s, validate (``orchestrate COMMAND --help``).

Exit codes: 0 done; 2 bad input or environment (manifest, data, models, no Hub); 3 a target failed
or passed the error threshold; 4 the run directory cannot be written (full disk, read-only); 130
interrupted (Ctrl-C / SIGTERM; everything already answered is on disk).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.markup import escape

from orchestrator import __version__
from orchestrator.errors import StoreError, UserError
from orchestrator.manifest import (
    Manifest,
    ManifestError,
    TargetConfig,
    load_manifest,
    parse_manifest,
    read_manifest_data,
    with_overrides,
)
from orchestrator.records import RECORD_SCHEMA
from orchestrator.registry import BACKENDS, COMPOSE_BACKENDS, K8S_BACKENDS, LOAD_PROMPTS, TASKS
from orchestrator.secrets import is_redacted, redact
from orchestrator.setups import run_setup_version

if TYPE_CHECKING:  # the commands import what they run, when they run (fast --help)
    from orchestrator.lifecycle import ComposeCLI, Plan
    from orchestrator.runner import Runner, TargetOutcome
    from orchestrator.store import RunStore

T = TypeVar("T")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
DATA_DIR_ENV = "ORCHESTRATOR_DATA_DIR"

console = Console(stderr=True, soft_wrap=True, highlight=False)  # one line per message, even in a pipe


def _error(text: str) -> None:
    """One line on stderr: ``error: ...``, credentials masked, never read as markup."""
    console.print(f"[red]error:[/] {escape(redact(text))}")


def _out() -> Console:
    """Console for the tables: a pipe or file gets the full width instead of 80 columns."""
    out = Console()
    return out if out.is_terminal else Console(width=220)


def _versions() -> dict[str, str]:
    import importlib.metadata
    import platform

    out = {"orchestrator": __version__, "python": platform.python_version()}
    for dist in (
        "aiohttp",
        "tenacity",
        "rich",
        "datasets",
        "huggingface-hub",
        "tokenizers",
        "llama-cpp-python",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def _git_sha() -> str | None:
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _data_dir(manifest: Manifest, cli_value: str | None) -> Path | None:
    if cli_value:
        return Path(cli_value).resolve()
    if manifest.run.data_dir:
        return manifest.resolve_path(manifest.run.data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).resolve() if env else None


def _tokenizer_path(manifest: Manifest) -> Any:
    def resolve(target: TargetConfig) -> Path | None:
        if target.tokenizer is None:
            return None
        p = manifest.resolve_path(target.tokenizer)
        return p if p.exists() else None  # otherwise a Hub id

    return resolve


def _load_for_bench(args: argparse.Namespace) -> tuple[Manifest, RunStore, dict[str, Any], Plan | None]:
    """The run's manifest, store and run.json, and the Compose plan when its servers are brought up in turns."""
    from orchestrator.store import RunStore
    from orchestrator.tasks import SETUP_VERSIONS

    plan = None
    if args.resume:
        run_dir = Path(args.resume)
        if not RunStore(run_dir).read_meta():
            raise ManifestError(str(run_dir), "", "not a run directory (no run.json) to resume")
        meta = RunStore(run_dir).require_meta()  # refuses records of a newer schema
        made_with, current = run_setup_version(meta), SETUP_VERSIONS.get(meta["manifest"]["run"]["setup"])
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
            manifest = parse_manifest(meta["manifest"], meta.get("manifest_path") or str(run_dir / "run.json"))
            manifest = _restore_credentials(manifest, meta, run_dir)
        if meta.get("compose"):
            from orchestrator.lifecycle import Plan

            plan = Plan.from_dict(meta["compose"])
    else:
        if args.compose:
            manifest, plan = _manifest_from_compose(args)
        elif args.manifest:
            manifest = load_manifest(args.manifest)
        else:
            raise ManifestError("orchestrate bench", "", "give a manifest, --compose FILE, or --resume RUN_DIR")
        run_id = args.run_id or f"{manifest.run.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        run_dir = manifest.resolve_path(manifest.run.output_dir) / run_id
        meta = RunStore(run_dir).read_meta()
    manifest = with_overrides(
        manifest,
        limit=args.limit,
        concurrency=args.concurrency,
        tasks=args.tasks.split(",") if args.tasks else None,
        backend=args.backend,
        noise_floor=args.noise_floor,
    )
    return manifest, RunStore(run_dir), meta, plan


def _restore_credentials(manifest: Manifest, meta: dict[str, Any], run_dir: Path) -> Manifest:
    """run.json keeps no credentials: a resumed target whose URL had some takes its URLs from the
    manifest file the run was started from (re-read, so ${VAR}s are expanded again), when that
    file still describes the same target; otherwise one line says how to resume."""
    if not any(is_redacted(u) for t in manifest.targets for u in (t.url, *t.urls) if u):
        return manifest
    path = meta.get("manifest_path")
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
    profiles = [p for value in args.profile or [] for p in _split(value)]
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
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    # SIGTERM (docker stop, kubectl delete) ends the run like Ctrl-C: in-flight samples are dropped.
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        return await runner.run(only)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)  # a Compose run takes its turn down on SIGTERM


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a manifest's tasks against its targets."""
    import asyncio

    from orchestrator.backends.launch import resolve_model
    from orchestrator.report import render_published, render_table, write_report
    from orchestrator.runner import Runner
    from orchestrator.runtime import run_async
    from orchestrator.tasks import SETUP_VERSIONS, manifest_tasks

    manifest, store, meta, plan = _load_for_bench(args)
    compose = None
    if plan is not None:
        from orchestrator.lifecycle import ComposeCLI

        if args.dry_run:  # the plan only: nothing is started, no run directory made
            for line in plan.lines():
                _out().print(line, highlight=False)
            return 0
        compose = ComposeCLI.find(plan.file)  # no Compose v2 or no daemon: one line, exit 2, before the run exists
        compose.check_daemon()
        if not Path(plan.file).is_file():
            raise ManifestError(plan.file, "", "the Compose file of this run is gone")
    elif args.dry_run:
        raise ManifestError("orchestrate bench", "--dry-run", "prints the turns of a Compose run: give --compose FILE")
    data_dir = _data_dir(manifest, args.data_dir)
    if args.resume and args.data_dir is None and meta.get("data_dir"):
        data_dir = Path(meta["data_dir"])  # resume with everything the run was started with
    tasks = manifest_tasks(manifest, data_dir)
    # Models are located (or downloaded) before the run exists: a missing file or an unreachable
    # Hub is one line and exit 2, not a run directory full of failed targets.
    model_paths = {
        t.name: resolve_model(t.launch, manifest.resolve_path) for t in manifest.targets if t.launch is not None
    }
    from orchestrator.progress import RichProgress

    progress = RichProgress(not args.no_progress, console)
    runner = Runner(manifest, list(tasks), store, progress, _tokenizer_path(manifest), model_paths=model_paths)
    meta.setdefault("run_id", store.root.name)
    meta.setdefault("created_at", _now())
    meta["manifest"] = redact(manifest.to_dict())
    meta["manifest_path"] = (
        str(Path(manifest.source).resolve())
        if manifest.source.endswith((".yaml", ".yml"))
        else (meta.get("manifest_path"))
    )
    meta["data_dir"] = None if data_dir is None else str(data_dir)
    meta["setup"] = {"name": manifest.run.setup, "version": SETUP_VERSIONS[manifest.run.setup]}
    # The newest record schema in the run (a resumed run of schema 1 appends schema-2 records; the
    # reader takes both).
    meta["record_schema"] = RECORD_SCHEMA
    meta["versions"] = _versions()
    meta["git_sha"] = _git_sha()
    meta["samples"] = {name: len(s) for name, s in runner.samples.items()}
    session: dict[str, Any] = {"started_at": _now(), "ended_at": None, "status": "running", "argv": sys.argv[1:]}
    meta.setdefault("sessions", []).append(session)
    meta.setdefault("servers", {})
    # Nothing is sent to a run directory that cannot take records (read-only, full, missing).
    store.check_writable()
    store.write_meta(meta)
    console.print(f"run dir: [bold]{store.root}[/]")
    status = "interrupted"
    outcomes: list[TargetOutcome] = []
    cpu0 = time.process_time()
    disk: StoreError | None = None
    try:
        with progress.bars:
            if plan is not None and compose is not None:
                outcomes = _bench_in_turns(plan, compose, runner, store, meta, args.keep_up)
            else:
                outcomes = run_async(_bench_async(runner))
        status = "failed" if any(o.failure for o in outcomes) else "done"
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the main task
        console.print(
            f"[yellow]interrupted: answered samples are on disk; resume with `orchestrate bench --resume {store.root}`"
        )
        return EXIT_INTERRUPTED
    except StoreError as exc:
        status, disk = "disk error", exc
    finally:
        if runner.notes:
            session["notes"] = runner.notes
        try:
            store.close()
        except StoreError as exc:
            disk = disk or exc
        _record_outcomes(meta, outcomes)
        session["ended_at"] = _now()
        session["status"] = status
        session["client_cpu_s"] = round(time.process_time() - cpu0, 3)  # is the client ever the bottleneck?
        try:
            store.write_meta(meta)
        except StoreError:
            if disk is None:
                raise
            disk.meta_unwritten = True  # type: ignore[attr-defined]
    if disk is not None:
        return _disk_failure(disk, runner, store)
    report = write_report(store.root)
    _out().print(render_table(report))
    for published in render_published(report):
        _out().print(published)
    console.print(f"report: {store.root / 'report.md'}")
    for note in runner.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    failed = [o for o in outcomes if o.failure]
    for o in failed:
        _error(o.failure or "")
    for row in report["rows"]:
        total = sum(t["n"] + t["errors"] for t in row["tasks"].values())
        if total and row["errors"] / total > manifest.client.error_threshold and not failed:
            _error(f"{row['target']}: {row['errors']} of {total} samples failed")
            return EXIT_FAILED
    return EXIT_FAILED if failed else 0


def _record_outcomes(meta: dict[str, Any], outcomes: list[TargetOutcome]) -> None:
    """Each target's server facts and, if it stopped early, why (for its row in the report; a later
    session that completes it clears the reason)."""
    failures = meta.setdefault("failures", {})
    for o in outcomes:
        if o.server:
            meta.setdefault("servers", {})[o.name] = o.server
        if o.failure:
            failures[o.name] = o.failure
        else:
            failures.pop(o.name, None)


def _bench_in_turns(
    plan: Plan, compose: ComposeCLI, runner: Runner, store: RunStore, meta: dict[str, Any], keep_up: bool
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


def _disk_failure(exc: StoreError, runner: Runner, store: RunStore) -> int:
    """One line for a run the disk stopped: what is safe on disk, what will be sent again."""
    meta_note = "; run.json could not be updated either" if getattr(exc, "meta_unwritten", False) else ""
    _error(
        f"{exc}; {runner.written} answers of this session are on disk, {runner.unwritten} in flight "
        f"were not written and will be sent again by `orchestrate bench --resume {store.root}` once there is room"
        f"{meta_note}"
    )
    return exc.exit_code


def cmd_load(args: argparse.Namespace) -> int:
    """Load-test the manifest's targets with synthetic prompts; latency tables and curves."""
    import asyncio

    from orchestrator.loadrun import LoadRunner
    from orchestrator.loadtest import LoadProfile, parse_slo
    from orchestrator.report import render_latency_table, write_load_report
    from orchestrator.store import RunStore

    manifest = load_manifest(args.manifest)
    base = base_profile(manifest)
    overrides: dict[str, Any] = {
        "mode": args.mode,
        "requests": args.requests,
        "duration": args.duration,
        "warmup": args.warmup,
        "input_tokens": args.input_tokens,
        "output_tokens": args.output_tokens,
        "max_concurrency": args.max_concurrency,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if args.levels == "auto":
        base["auto"] = True
    elif args.levels:
        base["levels"] = _numbers(args.levels, "--levels", "concurrencies or requests/s, or 'auto'")
    if args.percentiles:
        base["percentiles"] = _numbers(args.percentiles, "--percentiles", "e.g. 50,90,99")
    if args.slo:
        base["slo"] = parse_slo(args.slo)
    if args.no_ignore_eos:
        base["ignore_eos"] = False
    if args.prompts:
        base["prompts"] = args.prompts
    profile = LoadProfile.from_dict(base)
    run_id = args.run_id or f"{manifest.run.name}-load-{dt.datetime.now():%Y%m%d-%H%M%S}"
    store = RunStore(manifest.resolve_path(manifest.run.output_dir) / run_id)
    meta: dict[str, Any] = {
        "run_id": run_id,
        "created_at": _now(),
        "kind": "load",
        "manifest": redact(manifest.to_dict()),
        "load_profile": profile.to_dict(),
        "record_schema": RECORD_SCHEMA,
        "versions": _versions(),
        "git_sha": _git_sha(),
    }
    store.write_meta(meta)
    from orchestrator.progress import RichProgress
    from orchestrator.runtime import run_async

    progress = RichProgress(not args.no_progress, console)
    runner = LoadRunner(manifest, profile, store, progress, _tokenizer_path(manifest))
    cpu0 = time.process_time()
    try:
        with progress.bars:
            results = run_async(runner.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED
    finally:
        store.close()
    requests = sum(len(r.records) for r in results)
    meta["client"] = {
        "cpu_s": time.process_time() - cpu0,
        # While levels ran only: building the prompts (tokenizing thousands of them) is set-up.
        "levels_cpu_s": sum(r.cpu_s for r in results),
        "cpu_us_per_request": sum(r.cpu_s for r in results) / requests * 1e6 if requests else None,
        # Per level, for who set its pace (saturation.py).
        "levels": {f"{r.target}/{r.mode}-{r.level:g}": r.cpu_s for r in results},
    }
    meta["load_notes"] = runner.notes
    meta["servers"] = runner.servers
    meta["server_metrics"] = {
        f"{r.target}/{r.mode}-{r.level:g}": {"before": r.server_before, "after": r.server_after} for r in results
    }
    if args.gpu or args.bandwidth_gbs:
        meta["roofline"] = _rooflines(manifest, results, args, profile)
    store.write_meta(meta)
    report = write_load_report(store.root)
    _out().print(render_latency_table(report))
    for target, r in report["roofline"].items():
        console.print(
            f"{target}: batch-1 decode {r['achieved_tok_s'] or 0:.1f} tok/s of a {r['bound_tok_s'] or 0:.1f} tok/s "
            f"bandwidth bound ({100 * (r['fraction'] or 0):.1f}%, estimate: weights only)"
        )
    for target, levels in report["targets"].items():
        if levels and (top := levels[-1]).get("saturation"):  # the highest level says most
            console.print(f"{target} at {top['mode']} {top['level']:g}: {top['saturation']['line']}", highlight=False)
    for target, notes in runner.notes.items():
        for note in notes:
            console.print(f"[yellow]{target}:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"report: {store.root / 'load_report.html'}")
    return EXIT_FAILED if any("failed:" in n for notes in runner.notes.values() for n in notes) else 0


def _rooflines(manifest: Manifest, results: list[Any], args: argparse.Namespace, profile: Any) -> dict[str, Any]:
    """Per target: batch-1 decode tokens/s achieved (lowest level's TPOT p50) vs the bandwidth
    bound, under the profile the run used (the manifest's with the command line's overrides)."""
    from orchestrator.loadtest import level_metrics
    from orchestrator.roofline import bandwidth, roofline, weight_bytes

    bw = bandwidth(args.gpu, args.bandwidth_gbs)
    out: dict[str, Any] = {}
    for target in manifest.targets:
        levels = sorted((r for r in results if r.target == target.name), key=lambda r: r.level)
        source = target.launch.model_path if target.launch and target.launch.model_path else target.model_id
        if not levels or source is None:
            continue
        source = str(manifest.resolve_path(source)) if manifest.resolve_path(source).exists() else source
        metrics = level_metrics(levels[0].records, profile)  # the median is there whatever was asked
        out[target.name] = roofline(weight_bytes(source), bw, args.gpus_per_target, metrics["tpot_ms"]["p50"])
        out[target.name]["level"] = f"{levels[0].mode} {levels[0].level:g}"
    return out


def base_profile(manifest: Manifest) -> dict[str, Any]:
    """The manifest's load_test profile in plain form (the CLI's overrides go on top)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(manifest.load_test).items()}


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render the tables of a run from disk; with a second run, the two side by side."""
    from orchestrator.report import compare_reports, render_comparison, render_published, render_table, write_report
    from orchestrator.store import NotARunError

    reference = Path(args.reference) if getattr(args, "reference", None) else None
    report = write_report(Path(args.run_dir), reference)
    _out().print(render_table(report))
    for published in render_published(report):
        _out().print(published)
    if getattr(args, "other_run", None):
        other = write_report(Path(args.other_run), reference)
        _out().print(render_table(other))
        from orchestrator.store import atomic_write, json_document

        cmp = compare_reports(report, other, Path(args.run_dir), Path(args.other_run))
        if not cmp["rows"]:
            raise NotARunError("the two runs share no checkpoint (model and quantization)")
        _out().print(render_comparison(cmp))
        path = Path(args.other_run) / f"compare-{report['run_id']}.json"
        atomic_write(path, json_document(redact(cmp)))
        console.print(f"comparison: {path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Re-score a run's stored replies, or score an IFEval responses file."""
    from orchestrator.rescore import RescoreError, rescore_run, score_responses

    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV]).resolve()
    if args.responses:
        if args.task != "ifeval":
            raise RescoreError("--responses scores IFEval responses: give --task ifeval")
        responses = Path(args.responses)
        out_dir = Path(args.output_dir) if args.output_dir else responses.parent
        metrics = score_responses(responses, data_dir, out_dir)
        for key in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
            value = metrics[key]
            _out().print(f"{key.replace('_', '-level ', 1):<24} {'' if value is None else f'{100 * value:.2f}'}")
        _out().print(
            f"prompts {metrics['n']}; verdicts: {out_dir / 'eval_results_strict.jsonl'}, eval_results_loose.jsonl"
        )
        return 0
    if not args.run_dir:
        raise RescoreError("give RUN_DIR, or --responses FILE --task ifeval")
    counts = rescore_run(Path(args.run_dir), data_dir)
    console.print("re-scored: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return cmd_report(args)


def cmd_compose(args: argparse.Namespace) -> int:
    """Render Compose files from the checkpoint matrix, or check a Compose file."""
    from orchestrator.compose import (
        ComposeError,
        ComposeOptions,
        check_compose,
        dump_compose,
        load_compose,
        render_compose,
    )

    schema = Path(args.schema) if args.schema else None
    if args.check:
        problems = check_compose(load_compose(Path(args.check)), args.check, schema)
        for line in problems:
            _error(line)
        if not problems:
            _out().print(f"{args.check}: OK")
        return EXIT_BAD_INPUT if problems else 0
    options = ComposeOptions(
        backend=args.backend,
        sizes=tuple(_split(args.sizes)),
        quants=tuple(_split(args.quants)),
        gpus=tuple(_split(args.gpus)),
        first_port=args.first_port,
        hf_cache=args.hf_cache or ComposeOptions.hf_cache,
        reuse_gpus_across_sizes=not args.no_gpu_reuse,
        image=args.image,
        gpu=not args.cpu,
        network_host=args.network_host,
        model_dir=str(Path(args.model_dir).resolve()) if args.model_dir else None,
        parallel=args.parallel,
    )
    doc = render_compose(options)
    problems = check_compose(doc, args.output or "<generated>", schema)
    if problems:  # a generator bug, never the user's: say so loudly
        raise ComposeError("generated file fails its own checks: " + "; ".join(problems))
    text = dump_compose(doc, options)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        console.print(f"wrote {args.output}: {len(doc['services'])} services")
    else:
        sys.stdout.write(text)
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    """Render Kubernetes manifests (Deployments, Services, PVC, bench Job) from the checkpoint matrix."""
    from orchestrator.k8s import K8sOptions, dump_k8s, render_k8s

    options = K8sOptions(
        backend=args.backend,
        sizes=tuple(_split(args.sizes)),
        quants=tuple(_split(args.quants)),
        namespace=args.namespace,
        replicas=args.replicas,
        storage_class=args.storage_class,
        orchestrator_image=args.image,
    )
    text = dump_k8s(render_k8s(options))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        console.print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _numbers(value: str, option: str, expected: str) -> list[float]:
    """Comma-separated numbers from the command line, or one line saying what was expected."""
    from orchestrator.loadtest import LoadConfigError

    try:
        return [float(x) for x in _split(value)]
    except ValueError:
        raise LoadConfigError(f"{option}: expected comma-separated numbers ({expected}), got {value!r}") from None


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a manifest and say what it would run."""
    m = load_manifest(args.manifest)
    # What bench would refuse later, refused now: local files that are not there.
    for i, t in enumerate(m.targets):
        if t.launch is not None and t.launch.model_path is not None:
            path = m.resolve_path(t.launch.model_path)
            if not path.is_file():
                raise ManifestError(args.manifest, f"targets[{i}].launch.model_path", f"no such file: {path}")
    if m.run.data_dir and not m.resolve_path(m.run.data_dir).is_dir():
        raise ManifestError(args.manifest, "run.data_dir", f"no such folder: {m.resolve_path(m.run.data_dir)}")
    from orchestrator.backends.launch import LlamaServer, managed_server

    servers = []
    for t in m.targets:
        if t.launch is not None:  # which llama.cpp server bench would start (a missing one: exit 2)
            server = managed_server(t.name, t.launch, Path(), Path(), 1, m.resolve_path)
            where = f" ({server.binary})" if isinstance(server, LlamaServer) else ""
            servers.append(f"  {t.name}: {server.kind}{where}")
    tasks = ", ".join(f"{k}(limit={v.limit})" for k, v in m.tasks.items())
    _out().print(f"{args.manifest}: OK — {len(m.targets)} targets; tasks {tasks}; setup {m.run.setup}")
    for line in servers:
        _out().print(line, highlight=False)
    return 0


def _matrix_args(parser: argparse.ArgumentParser, default_backend: str, backends: Sequence[str]) -> None:
    """Backend and checkpoint selection, shared by `compose` and `k8s`."""
    parser.add_argument("--backend", choices=backends, default=default_backend)
    parser.add_argument("--sizes", help="comma-separated: 0.5b,1.5b,7b,72b (default: all)")
    parser.add_argument(
        "--quants",
        help="comma-separated: bf16,gptq-int8,gptq-int4,awq (default: all); llamacpp: GGUF files "
        "fp16,q8_0,q6_k,q5_k_m,q5_0,q4_k_m,q4_0,q3_k_m,q2_k (default: fp16,q8_0,q5_k_m,q4_k_m)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    doc = (__doc__ or "").split("\n\n")
    p = argparse.ArgumentParser(
        prog="orchestrate",
        description=doc[0].strip(),
        epilog=" ".join(doc[-1].split()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="run accuracy tasks and time every request")
    b.add_argument("manifest", nargs="?", help="run manifest (YAML)")
    b.add_argument("--resume", metavar="RUN_DIR", help="continue a run: only samples without a record are sent")
    b.add_argument("--run-id", help="run directory name under output_dir (re-using one resumes it)")
    b.add_argument("--limit", type=int, help="per-task limit (deterministic, stratified by subject)")
    b.add_argument("--data-dir", help=f"local data root with mmlu/ and ceval/ (also ${DATA_DIR_ENV})")
    b.add_argument("--concurrency", type=int, help="in-flight requests per target")
    b.add_argument(
        "--noise-floor",
        action="store_true",
        help="send each reference target's samples twice more (at the run's concurrency and at 1): what serving "
        "alone changes, the floor the quantization deltas are read against (also run.noise_floor)",
    )
    b.add_argument("--tasks", help="comma-separated subset of the manifest's tasks")
    b.add_argument(
        "--compose",
        metavar="FILE",
        help="bench a Compose file's labelled services, its profiles brought up, benched and taken down in turn",
    )
    b.add_argument("--profile", action="append", help="with --compose: the profiles, in order (0.5b,7b; repeatable)")
    b.add_argument("--all-profiles", action="store_true", help="with --compose: every profile (the file's turns)")
    b.add_argument(
        "--health-timeout",
        type=float,
        help="with --compose: seconds for a turn to become healthy (default: as long as the services' healthchecks "
        "allow: start period + retries; 1800 without one)",
    )
    b.add_argument("--keep-up", action="store_true", help="with --compose: leave the last (or interrupted) turn up")
    b.add_argument(
        "--running",
        action="store_true",
        help="with --compose: the services are up already (docker compose up by hand): wait for /health and "
        "bench them; nothing is started or stopped",
    )
    b.add_argument("--dry-run", action="store_true", help="with --compose: print the turns, start nothing")
    b.add_argument(
        "--backend",
        choices=BACKENDS,
        help="swap the serving backend of every target (same URLs, another adapter)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_bench)

    ld = sub.add_parser(
        "load",
        help="load-test the targets: fixed concurrency, constant or Poisson rates, sweeps, SLO goodput",
        description="Metrics as vLLM names them: TTFT (time to first token), TPOT (time per output token; "
        "AIPerf/guidellm: inter-token latency per request), ITL (inter-token latency, pooled), E2EL "
        "(end-to-end latency; guidellm: request latency), request/output/total token throughput, queue time "
        "(client-side wait before send), dispatch lag (actual - intended send time), post time "
        "(client-side, after the reply's last byte).",
    )
    ld.add_argument("manifest")
    ld.add_argument("--mode", choices=["concurrency", "constant", "poisson"])
    ld.add_argument("--levels", help="comma-separated concurrencies or rates (req/s), or 'auto' (find saturation)")
    ld.add_argument("--requests", type=int, help="requests per level after warm-up")
    ld.add_argument("--duration", type=float, help="seconds per level at most")
    ld.add_argument("--warmup", type=int, help="requests per level excluded from statistics")
    ld.add_argument("--input-tokens", type=int)
    ld.add_argument("--output-tokens", type=int)
    ld.add_argument("--max-concurrency", type=int, help="rate modes: cap of in-flight requests (client queue)")
    ld.add_argument("--slo", help="goodput SLOs, e.g. ttft=200ms,tpot=50ms")
    ld.add_argument("--percentiles", help="e.g. 50,90,99")
    ld.add_argument("--no-ignore-eos", action="store_true", help="let the model stop early")
    ld.add_argument(
        "--prompts",
        choices=LOAD_PROMPTS,
        help="synthetic prompts of --input-tokens tokens (default), or a benchmark's own (needs run.data_dir or Hub)",
    )
    ld.add_argument("--gpu", help="roofline estimate: GPU of the servers (h100, a100, h200, l40s, l4, ...)")
    ld.add_argument("--bandwidth-gbs", type=float, help="roofline estimate: memory bandwidth per GPU, GB/s")
    ld.add_argument("--gpus-per-target", type=int, default=1, help="roofline: GPUs each server reads weights with")
    ld.add_argument("--run-id")
    ld.add_argument("--no-progress", action="store_true")
    ld.set_defaults(func=cmd_load)

    r = sub.add_parser("report", help="re-render a run's tables from disk; two runs: side by side")
    r.add_argument("run_dir")
    r.add_argument("other_run", nargs="?", help="a second run of the same checkpoints (e.g. another backend)")
    r.add_argument(
        "--reference",
        metavar="FILE",
        help="published figures to compare with (JSON; default: the shipped tables, Qwen docs' and SmolLM2's card)",
    )
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("score", help="re-score stored replies (no server), or score an IFEval responses file")
    s.add_argument("run_dir", nargs="?")
    s.add_argument("--responses", metavar="FILE", help="JSONL of {prompt, response} (official input_response format)")
    s.add_argument("--task", choices=["ifeval"], help="task of the responses file")
    s.add_argument("--data-dir", help=f"local data root (also ${DATA_DIR_ENV}); default: the Hub or the run's")
    s.add_argument("--output-dir", help="where eval_results_{strict,loose}.jsonl go (default: beside FILE)")
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compose", help="render Compose files for the Qwen2 checkpoint matrix, or --check one")
    _matrix_args(c, default_backend="tgi", backends=COMPOSE_BACKENDS)
    c.add_argument("--gpus", default="0,1,2,3,4,5,6,7", help="GPU ids to assign, in order")
    c.add_argument("--first-port", type=int, default=8001, help="host port of the first service")
    c.add_argument("--hf-cache", help="host folder of the Hugging Face cache (default: $HF_HOME)")
    c.add_argument("--no-gpu-reuse", action="store_true", help="never give a GPU to two services, even across sizes")
    c.add_argument("--image", help="every service's image instead of the backend's official one")
    c.add_argument("--cpu", action="store_true", help="no GPU reservations (a CPU image; llama.cpp: its CPU image)")
    c.add_argument("--network-host", action="store_true", help="network_mode host: servers listen on the host ports")
    c.add_argument("--model-dir", help="llamacpp: host folder of GGUF files (Hub names), mounted read-only")
    c.add_argument("--parallel", type=int, default=8, help="llamacpp: slots per server (each 8,192 tokens)")
    c.add_argument("-o", "--output", help="write here instead of stdout")
    c.add_argument("--check", metavar="FILE", help="check a Compose file (schema + GPU, port, token, TP rules)")
    c.add_argument("--schema", help="compose-spec.json (default: $ORCHESTRATOR_COMPOSE_SCHEMA or ../shared/specs)")
    c.set_defaults(func=cmd_compose)

    k = sub.add_parser("k8s", help="render Kubernetes manifests for the checkpoint matrix (more than one host)")
    _matrix_args(k, default_backend="vllm", backends=K8S_BACKENDS)
    k.add_argument("--namespace", default="llm-bench")
    k.add_argument("--replicas", type=int, default=1, help="server replicas per checkpoint")
    k.add_argument("--storage-class", help="storage class of the shared (ReadWriteMany) Hugging Face cache")
    k.add_argument("--image", default="orchestrator:latest", help="image with orchestrator installed, for the Job")
    k.add_argument("-o", "--output", help="write here instead of stdout")
    k.set_defaults(func=cmd_k8s)

    v = sub.add_parser("validate", help="validate a manifest")
    v.add_argument("manifest")
    v.set_defaults(func=cmd_validate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input is one line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
