"""`orchestrate gate RUN` and `bench --gate`: the run's verdicts as an exit code CI acts on, with
gate.json and JUnit XML beside the run (gate.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from orchestrator.cli.common import console
from orchestrator.gate import GateConfig, GateError, parse_losses, parse_share

EXIT_GATE_FAILED = 5
JUNIT_NAME = "gate.junit.xml"


def add_gate_args(parser: argparse.ArgumentParser) -> None:
    """The gate's limits (the same on `gate` and on `bench --gate`)."""
    g = parser.add_argument_group("gate")
    g.add_argument(
        "--max-loss",
        metavar="TASK=PTS,...",
        help="tolerated loss in points per task or the Average (mmlu=1.0,ifeval=2,average=1): fails when the paired "
        "Δ's 95%% interval lies wholly below -PTS",
    )
    g.add_argument("--max-error-rate", metavar="PCT", help="fail a row x task whose failed requests exceed PCT (1%%)")
    g.add_argument("--max-unparsed", metavar="PCT", help="fail a row x task whose unparsed replies exceed PCT (5%%)")
    g.add_argument(
        "--require-power",
        action="store_true",
        help="an inconclusive loss fails: the run could not detect a loss of the tolerated size",
    )
    g.add_argument(
        "--max-kld", type=float, metavar="NATS", help="fail when mean KLD is above NATS (its interval's low end)"
    )
    g.add_argument(
        "--max-slowdown",
        metavar="PCT",
        help="fail when the speed phase's out tok/s is more than PCT below the other side's",
    )
    g.add_argument(
        "--baseline",
        metavar="RUN_DIR",
        help="hold each row against the same checkpoint (model, quantization) in this run, paired per sample, "
        "instead of its model's reference row",
    )
    g.add_argument("--junit", metavar="FILE", help=f"JUnit XML path (default: RUN_DIR/{JUNIT_NAME})")


def gate_config(args: argparse.Namespace) -> GateConfig:
    """The limits from the command line; GateError (exit 2) when none is given or one is malformed."""
    config = GateConfig(
        max_loss=parse_losses(args.max_loss) if args.max_loss else {},
        max_error_rate=None if args.max_error_rate is None else parse_share(args.max_error_rate, "--max-error-rate"),
        max_unparsed=None if args.max_unparsed is None else parse_share(args.max_unparsed, "--max-unparsed"),
        require_power=bool(args.require_power),
        max_kld=args.max_kld,
        max_slowdown=None if args.max_slowdown is None else parse_share(args.max_slowdown, "--max-slowdown"),
    )
    if not (config.max_loss or config.max_error_rate is not None or config.max_unparsed is not None
            or config.max_kld is not None or config.max_slowdown is not None):  # fmt: skip
        raise GateError(
            "the gate needs a limit: --max-loss, --max-error-rate, --max-unparsed, --max-kld or --max-slowdown"
        )
    if args.baseline and not (Path(args.baseline) / "run.json").is_file():
        raise GateError(f"--baseline {args.baseline}: not a run directory (no run.json)")
    return config


def run_gate(run_dir: Path, config: GateConfig, baseline: str | None, junit: str | None) -> int:
    """Judge a run: gate.json and the JUnit XML written, one line per failing row and a summary
    line printed; 0 when it passes, EXIT_GATE_FAILED when it does not."""
    from orchestrator.gate import baseline_comparisons, evaluate, junit_xml, unmatched
    from orchestrator.report import build_report
    from orchestrator.report.model import Report
    from orchestrator.store import RunStore

    report = Report.from_json(build_report(run_dir))
    comparisons = None
    name = None
    if baseline is not None:
        base_dir = Path(baseline)
        base = Report.from_json(build_report(base_dir))
        comparisons = baseline_comparisons(run_dir, report, base_dir, base)
        if not comparisons:
            raise GateError(f"run {report.run_id} and baseline {base.run_id} share no checkpoint (model, quantization)")
        name = base.run_id
        for target in unmatched(report, comparisons):
            console.print(f"[yellow]note:[/] {target}: no checkpoint of its model and quantization in {base.run_id}")
    result = evaluate(report, config, comparisons, name)
    store = RunStore(run_dir)
    store.write_json("gate.json", result.to_json())
    xml = junit_xml(result)
    path = Path(junit) if junit else run_dir / JUNIT_NAME
    if path.resolve().parent == run_dir.resolve():
        store.write_bytes(path.name, xml)  # the run directory's one writer
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(xml)
    for line in result.lines():
        style = "green" if line.startswith("gate PASS") else "red" if line.startswith(("FAIL", "gate FAIL")) else ""
        console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)
    console.print(f"gate: {run_dir / 'gate.json'}, {path}")
    return 0 if result.passed else EXIT_GATE_FAILED


def cmd_gate(args: argparse.Namespace) -> int:
    """Judge a stored run against its reference rows or a baseline run."""
    return run_gate(Path(args.run_dir), gate_config(args), args.baseline, args.junit)
