"""`orchestrate load`: the manifest's targets under a load profile (the manifest's, the command
line's overrides on top), its latency tables and curves, and the bandwidth roofline."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import time
from typing import Any

from orchestrator.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    console,
    git_sha,
    now,
    numbers,
    out,
    tokenizer_path,
    versions,
)
from orchestrator.manifest import Manifest, load_manifest
from orchestrator.records import RECORD_SCHEMA
from orchestrator.run_meta import RunMeta, ServerFacts
from orchestrator.secrets import redact


def cmd_load(args: argparse.Namespace) -> int:
    """Load-test the manifest's targets with synthetic prompts; latency tables and curves."""
    import asyncio

    from orchestrator.loadrun import LoadRunner
    from orchestrator.loadtest import LoadProfile, parse_slo
    from orchestrator.report import render_latency_table, write_load_report
    from orchestrator.report.load import footprint_lines
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
        base["levels"] = numbers(args.levels, "--levels", "concurrencies or requests/s, or 'auto'")
    if args.percentiles:
        base["percentiles"] = numbers(args.percentiles, "--percentiles", "e.g. 50,90,99")
    if args.slo:
        base["slo"] = parse_slo(args.slo)
    if args.no_ignore_eos:
        base["ignore_eos"] = False
    if args.prompts:
        base["prompts"] = args.prompts
    profile = LoadProfile.from_dict(base)
    run_id = args.run_id or f"{manifest.run.name}-load-{dt.datetime.now():%Y%m%d-%H%M%S}"
    store = RunStore(manifest.resolve_path(manifest.run.output_dir) / run_id)
    meta = RunMeta.from_json(
        {
            "run_id": run_id,
            "created_at": now(),
            "kind": "load",
            "manifest": redact(manifest.to_dict()),
            "load_profile": profile.to_dict(),
            "record_schema": RECORD_SCHEMA,
            "versions": versions(),
            "git_sha": git_sha(),
        }
    )
    store.write_meta(meta)
    from orchestrator.progress import RichProgress
    from orchestrator.runtime import run_async

    progress = RichProgress(not args.no_progress, console)
    runner = LoadRunner(manifest, profile, store, progress, tokenizer_path(manifest))
    cpu0 = time.process_time()
    try:
        with progress.bars:
            results = run_async(runner.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED
    finally:
        store.close()
    requests = sum(len(r.records) for r in results)
    meta.client = {
        "cpu_s": time.process_time() - cpu0,
        # While levels ran only: building the prompts (tokenizing thousands of them) is set-up.
        "levels_cpu_s": sum(r.cpu_s for r in results),
        "cpu_us_per_request": sum(r.cpu_s for r in results) / requests * 1e6 if requests else None,
        # Per level, for who set its pace (saturation.py).
        "levels": {f"{r.target}/{r.mode}-{r.level:g}": r.cpu_s for r in results},
    }
    meta.load_notes = runner.notes
    meta.servers = {name: ServerFacts.from_json(facts or {}) for name, facts in runner.servers.items() if facts}
    meta.server_metrics = {
        f"{r.target}/{r.mode}-{r.level:g}": {"before": r.server_before, "after": r.server_after} for r in results
    }
    if args.gpu or args.bandwidth_gbs:
        meta.roofline = _rooflines(manifest, results, args, profile)
    store.write_meta(meta)
    report = write_load_report(store.root)
    out().print(render_latency_table(report))
    for target, r in report["roofline"].items():
        console.print(
            f"{target}: batch-1 decode {r['achieved_tok_s'] or 0:.1f} tok/s of a {r['bound_tok_s'] or 0:.1f} tok/s "
            f"bandwidth bound ({100 * (r['fraction'] or 0):.1f}%, estimate: weights only)"
        )
    for line in footprint_lines(report):
        console.print(line, highlight=False, soft_wrap=True)
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
