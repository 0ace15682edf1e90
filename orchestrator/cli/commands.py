"""The commands that read what is on disk or write files: `report`, `score`, `compose`, `k8s`,
`validate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli.common import EXIT_BAD_INPUT, console, error, out, split
from orchestrator.manifest import ManifestError, load_manifest


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render the tables of a run from disk; with a second run, the two side by side."""
    from orchestrator.report import compare_reports, render_comparison, render_published, render_table, write_report
    from orchestrator.store import NotARunError

    reference = Path(args.reference) if getattr(args, "reference", None) else None
    report = write_report(Path(args.run_dir), reference)
    out().print(render_table(report))
    for published in render_published(report):
        out().print(published)
    if getattr(args, "other_run", None):
        other = write_report(Path(args.other_run), reference)
        out().print(render_table(other))
        from orchestrator.store import RunStore

        cmp = compare_reports(report, other, Path(args.run_dir), Path(args.other_run))
        if not cmp["rows"]:
            raise NotARunError("the two runs share no checkpoint (model and quantization)")
        out().print(render_comparison(cmp))
        path = RunStore(Path(args.other_run)).write_json(f"compare-{report['run_id']}.json", cmp)
        console.print(f"comparison: {path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Re-score a run's stored replies, or score an IFEval responses file."""
    from orchestrator.hub import data_root
    from orchestrator.rescore import RescoreError, rescore_run, score_responses

    data_dir = data_root(args.data_dir)
    if args.responses:
        if args.task != "ifeval":
            raise RescoreError("--responses scores IFEval responses: give --task ifeval")
        responses = Path(args.responses)
        out_dir = Path(args.output_dir) if args.output_dir else responses.parent
        metrics = score_responses(responses, data_dir, out_dir)
        for key in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
            value = metrics[key]
            out().print(f"{key.replace('_', '-level ', 1):<24} {'' if value is None else f'{100 * value:.2f}'}")
        out().print(
            f"prompts {metrics['n']}; verdicts: {out_dir / 'eval_results_strict.jsonl'}, eval_results_loose.jsonl"
        )
        return 0
    if not args.run_dir:
        raise RescoreError("give RUN_DIR, or --responses FILE --task ifeval")
    counts = rescore_run(Path(args.run_dir), args.data_dir)  # else the run's own data (hub.data_root)
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
            error(line)
        if not problems:
            out().print(f"{args.check}: OK")
        return EXIT_BAD_INPUT if problems else 0
    options = ComposeOptions(
        backend=args.backend,
        sizes=tuple(split(args.sizes)),
        quants=tuple(split(args.quants)),
        gpus=tuple(split(args.gpus)),
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
    return _emit(dump_compose(doc, options), args.output, f"{len(doc['services'])} services")


def cmd_k8s(args: argparse.Namespace) -> int:
    """Render Kubernetes manifests (Deployments, Services, PVC, bench Job) from the checkpoint matrix."""
    from orchestrator.k8s import K8sOptions, dump_k8s, render_k8s

    options = K8sOptions(
        backend=args.backend,
        sizes=tuple(split(args.sizes)),
        quants=tuple(split(args.quants)),
        namespace=args.namespace,
        replicas=args.replicas,
        storage_class=args.storage_class,
        orchestrator_image=args.image,
    )
    return _emit(dump_k8s(render_k8s(options)), args.output)


def _emit(text: str, output: str | None, what: str = "") -> int:
    """A rendered file to ``output`` (atomically: a full disk is one line, exit 4) or stdout."""
    from orchestrator.errors import StoreError
    from orchestrator.store import atomic_write

    if not output:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write(Path(output), text.encode("utf-8"))
    except OSError as exc:
        raise StoreError(f"cannot write {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {output}" + (f": {what}" if what else ""))
    return 0


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
    from orchestrator.llamacpp import LlamaServer, managed_server

    servers = []
    for t in m.targets:
        if t.launch is not None:  # which llama.cpp server bench would start (a missing one: exit 2)
            server = managed_server(t.name, t.launch, Path(), Path(), 1, m.resolve_path)
            where = f" ({server.binary})" if isinstance(server, LlamaServer) else ""
            servers.append(f"  {t.name}: {server.kind}{where}")
    tasks = ", ".join(f"{k}(limit={v.limit})" for k, v in m.tasks.items())
    out().print(f"{args.manifest}: OK — {len(m.targets)} targets; tasks {tasks}; setup {m.run.setup}")
    for line in servers:
        out().print(line, highlight=False)
    return 0
