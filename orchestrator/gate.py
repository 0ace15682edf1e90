"""The regression gate: a run's paired verdicts turned into a pass or a fail a CI pipeline can act on.

Each row is held against its reference row (the model's BF16/F16) or, with a baseline run, against
the same checkpoint in that run (matched by model and quantization, paired per sample on the same
prompts). A check fails only on the run's own evidence:

- **loss**: the upper end of the paired Δ's 95 % interval is below -tolerance (the loss is larger
  than allowed, with the run's confidence); a loss of that size neither shown nor excluded is
  *inconclusive* (listed; it fails with ``require_power`` when the run could not detect it: its
  minimum detectable difference is larger than the tolerance, or it has no interval);
- **errors** and **unparsed** replies: a share above the limit;
- **KLD**: the lower end of the mean KL's interval above the limit (inconclusive when the interval
  straddles it);
- **speed**: output tokens/s of the speed phase below (1 - max slowdown) of the other side's (one
  measurement per side, no interval).

One ``Case`` per row x task (its loss, errors and unparsed checks) and per row for the Average,
the KLD and the speed; the worst check is the case's status. ``gate.json`` holds it all; the JUnit
XML has one test case per ``Case``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.registry import TASKS
from orchestrator.report.model import PairedResult, Report, Row
from orchestrator.stats import Paired

AVERAGE = "average"
STATUSES = ("pass", "inconclusive", "fail")  # worst last


class GateError(UserError, ValueError):
    """A gate asked for something the run cannot answer (an unknown task, a bad limit)."""


@dataclass(frozen=True)
class GateConfig:
    """What the gate holds a run to: tolerated loss per task or the Average (points), the largest
    shares of errors and unparsed replies, KLD and slowdown limits, and whether an underpowered
    comparison fails."""

    max_loss: Mapping[str, float] = field(default_factory=dict)
    max_error_rate: float | None = None
    max_unparsed: float | None = None
    require_power: bool = False
    max_kld: float | None = None
    max_slowdown: float | None = None

    def to_json(self) -> dict[str, Any]:
        """gate.json's ``config``."""
        return {
            "max_loss": dict(self.max_loss),
            "max_error_rate": self.max_error_rate,
            "max_unparsed": self.max_unparsed,
            "require_power": self.require_power,
            "max_kld": self.max_kld,
            "max_slowdown": self.max_slowdown,
        }


def parse_losses(text: str) -> dict[str, float]:
    """``mmlu=1.0,ifeval=2,average=1`` -> {task: points}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            points = float(value)
        except ValueError:
            points = -1.0
        if not sep or points < 0:
            raise GateError(f"--max-loss: expected TASK=POINTS (e.g. mmlu=1.0,average=1), got {part!r}")
        out[name.strip().lower()] = points
    return out


def parse_share(text: str, flag: str) -> float:
    """``10%``, ``10`` (percent) or ``0.1`` -> 0.1."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise GateError(f"{flag}: expected a percentage such as 10% or 0.1, got {text!r}") from None
    share = value / 100 if text.strip().endswith("%") or value > 1 else value
    if not 0 <= share <= 1:
        raise GateError(f"{flag}: {text!r} is not between 0 and 100%")
    return share


@dataclass
class Check:
    """One limit applied to one figure."""

    name: str  # "loss", "errors", "unparsed", "kld", "speed"
    status: str
    message: str


@dataclass
class Case:
    """One row x task (or the row's Average, KLD, speed): its checks and figures."""

    target: str
    model: str
    quantization: str
    task: str
    against: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The worst of its checks."""
        return max((c.status for c in self.checks), key=STATUSES.index, default="pass")

    @property
    def message(self) -> str:
        """Every check, one clause each."""
        return "; ".join(f"{c.name}: {c.message}" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """gate.json's form."""
        return {
            "target": self.target,
            "model": self.model,
            "quantization": self.quantization,
            "task": self.task,
            "against": self.against,
            "status": self.status,
            "checks": [{"name": c.name, "status": c.status, "message": c.message} for c in self.checks],
            "figures": self.figures,
        }


@dataclass
class GateResult:
    """The gate's verdict on a run."""

    run_id: str
    baseline: str | None
    config: GateConfig
    cases: list[Case]

    @property
    def failed(self) -> list[Case]:
        """Cases that fail."""
        return [c for c in self.cases if c.status == "fail"]

    @property
    def passed(self) -> bool:
        """No case fails."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """gate.json."""
        rows = list(dict.fromkeys(c.target for c in self.cases))
        failing = list(dict.fromkeys(c.target for c in self.failed))
        return {
            "run_id": self.run_id,
            "baseline": self.baseline,
            "status": "pass" if self.passed else "fail",
            "config": self.config.to_json(),
            "rows": len(rows),
            "failing_rows": failing,
            "inconclusive": [f"{c.target}/{c.task}" for c in self.cases if c.status == "inconclusive"],
            "cases": [c.to_json() for c in self.cases],
        }

    def lines(self) -> list[str]:
        """One line per failing row, then the summary line."""
        out = []
        for target in dict.fromkeys(c.target for c in self.failed):
            failing = [c for c in self.failed if c.target == target]
            parts = [
                f"{TASKS.get(c.task, c.task)} {ck.name}: {ck.message}"
                for c in failing
                for ck in c.checks
                if ck.status == "fail"
            ]
            out.append(f"FAIL {target}: " + "; ".join(parts))
        rows = len(dict.fromkeys(c.target for c in self.cases))
        failing_rows = len(dict.fromkeys(c.target for c in self.failed))
        inconclusive = sum(c.status == "inconclusive" for c in self.cases)
        against = f"against {self.baseline}" if self.baseline else "against each model's reference row"
        verdict = "PASS" if self.passed else "FAIL"
        out.append(
            f"gate {verdict}: {failing_rows} of {rows} rows failed ({len(self.failed)} of {len(self.cases)} cases), "
            f"{inconclusive} inconclusive, {against}"
        )
        return out


def _pts(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:+.1f}"


def _interval(p: PairedResult | Paired) -> str:
    iv = p.interval
    return "no interval" if iv is None else f"[{_pts(iv[0])}, {_pts(iv[1])}]"


def loss_check(p: PairedResult | Paired | None, points: float, require_power: bool) -> Check:
    """The paired Δ against a tolerated loss of ``points``."""
    tol = points / 100
    if p is None or p.delta is None or not p.n:
        return Check("loss", "fail" if require_power else "inconclusive", "not compared (no paired samples)")
    iv = p.interval
    figure = f"Δ {_pts(p.delta)} pts {_interval(p)} on {p.n} paired samples"
    if iv is not None and iv[1] < -tol:
        return Check("loss", "fail", f"{figure}: a loss beyond the {points:g}-point tolerance")
    underpowered = iv is None or p.mdd is None or p.mdd > tol
    if require_power and underpowered:
        shown = "?" if p.mdd is None else f"{100 * p.mdd:.1f}"
        return Check(
            "loss",
            "fail",
            f"{figure}: cannot detect a {points:g}-point loss (only a change > {shown} points would show)",
        )
    if iv is None or iv[0] < -tol:
        return Check("loss", "inconclusive", f"{figure}: a {points:g}-point loss is not excluded")
    return Check("loss", "pass", f"{figure}: within the {points:g}-point tolerance")


def _share_check(name: str, count: int, n: int, limit: float) -> Check:
    share = count / n if n else 0.0
    text = f"{count} of {n} ({100 * share:.1f}%), limit {100 * limit:g}%"
    return Check(name, "fail" if share > limit else "pass", text)


def kld_check(divergence: Mapping[str, Any] | None, limit: float) -> Check:
    """Mean KL(reference ‖ row) over the common prefix, all tasks, against ``limit``."""
    kl = (divergence or {}).get("kl_prefix") or {}
    if kl.get("mean") is None:
        return Check("kld", "inconclusive", "no KLD (the run asked no logprobs, or nothing was paired)")
    iv = kl.get("interval")
    figure = f"mean {kl['mean']:.4g} nats" + ("" if iv is None else f" [{iv[0]:.4g}, {iv[1]:.4g}]")
    if iv is not None and iv[0] > limit:
        return Check("kld", "fail", f"{figure}: above {limit:g}")
    if (iv is None and kl["mean"] > limit) or (iv is not None and iv[1] > limit):
        return Check("kld", "inconclusive", f"{figure}: {limit:g} neither exceeded nor excluded")
    return Check("kld", "pass", f"{figure}: below {limit:g}")


def speed_check(ratio: float | None, limit: float) -> Check:
    """Output tokens/s of the speed phase as a multiple of the other side's, against a slowdown."""
    if ratio is None:
        return Check("speed", "inconclusive", "no speed phase on one side")
    slower = 1 - ratio
    text = f"out tok/s ×{ratio:.2f} ({100 * slower:+.1f}% slower), limit {100 * limit:g}% (one measurement each)"
    return Check("speed", "fail" if slower > limit else "pass", text)


def _out_tok_s(row: Row) -> float | None:
    from orchestrator.report.compare import phase_figure

    return phase_figure(row, "output_tokens_per_s")


@dataclass(frozen=True)
class Against:
    """What one row is held against: a name, per-task and Average comparisons, divergence, speed ratio."""

    name: str
    tasks: Mapping[str, PairedResult | Paired]
    average: PairedResult | Paired | None
    divergence: Mapping[str, Any] | None
    speed_ratio: float | None


def against_reference(row: Row) -> Against | None:
    """A row's comparison with its model's reference row, as the report made it."""
    cmp = row.comparison
    if cmp is None or row.reference in (None, row.target):
        return None
    speed = (row.speed_vs_reference or {}).get("output_tokens_per_s")
    return Against(row.reference or "", cmp.tasks, cmp.average, cmp.divergence, speed)


def evaluate(
    report: Report,
    config: GateConfig,
    baseline: Mapping[str, Against] | None = None,
    baseline_name: str | None = None,
) -> GateResult:
    """Every row of ``report`` against its reference (or, given ``baseline``: target -> what it is
    held against in the baseline run), under ``config``."""
    unknown = [k for k in config.max_loss if k != AVERAGE and k not in report.tasks]
    if unknown:
        raise GateError(
            f"--max-loss names {', '.join(unknown)}: not a task of run {report.run_id} ({', '.join(report.tasks)})"
        )
    cases: list[Case] = []
    for row in report.rows:
        if row.noise_of:
            continue  # the noise floor's repeats say what serving alone changes: not a checkpoint to gate
        if baseline is None:
            held = against_reference(row)
            name = held.name if held is not None else "nothing (no reference row)"
        else:
            held = baseline.get(row.target)
            name = held.name if held is not None else f"nothing: no {row.model} {row.quantization} in {baseline_name}"
        cases += _row_cases(report, row, held, name, config, missing_baseline=baseline is not None and held is None)
    return GateResult(report.run_id, baseline_name, config, cases)


def _row_cases(
    report: Report, row: Row, held: Against | None, name: str, config: GateConfig, missing_baseline: bool
) -> list[Case]:
    """A row's cases: one per task, then its Average, KLD and speed where asked."""
    cases = []
    for task in report.tasks:
        agg = row.tasks.get(task)
        c = Case(row.target, row.model, row.quantization, task, name)
        if agg is not None:
            c.figures = {"accuracy": agg.accuracy, "n": agg.n, "errors": agg.errors, "unparsed": agg.unparsed}
        if task in config.max_loss and held is not None:
            p = held.tasks.get(task)
            c.checks.append(loss_check(p, config.max_loss[task], config.require_power))
            if p is not None:
                c.figures.update(delta=p.delta, interval=p.interval, mdd=p.mdd, paired=p.n)
        if agg is not None and config.max_error_rate is not None:
            c.checks.append(_share_check("errors", agg.errors, agg.n, config.max_error_rate))
        if agg is not None and config.max_unparsed is not None:
            c.checks.append(_share_check("unparsed", agg.unparsed, agg.n - agg.errors, config.max_unparsed))
        if row.failure:
            c.checks.append(Check("run", "fail", row.failure))
        if missing_baseline and config.max_loss:
            c.checks.append(Check("baseline", "fail" if config.require_power else "inconclusive", name))
        cases.append(c)
    if held is None:
        return cases
    if AVERAGE in config.max_loss:
        c = Case(row.target, row.model, row.quantization, AVERAGE, name)
        c.checks.append(loss_check(held.average, config.max_loss[AVERAGE], config.require_power))
        if held.average is not None:
            c.figures = {"delta": held.average.delta, "interval": held.average.interval, "mdd": held.average.mdd}
        cases.append(c)
    if config.max_kld is not None:
        c = Case(row.target, row.model, row.quantization, "kld", name)
        c.checks.append(kld_check(held.divergence, config.max_kld))
        cases.append(c)
    if config.max_slowdown is not None:
        c = Case(row.target, row.model, row.quantization, "speed", name)
        c.checks.append(speed_check(held.speed_ratio, config.max_slowdown))
        c.figures = {"output_tokens_per_s": _out_tok_s(row), "ratio": held.speed_ratio}
        cases.append(c)
    return cases


def junit_xml(result: GateResult) -> bytes:
    """JUnit XML (the Jenkins/Ant schema GitHub, GitLab and Jenkins read): one test suite, one test
    case per ``Case`` (class: the row, name: the task), a failure with the checks' message where
    it fails, the message as system-out where it passes or is inconclusive."""
    failures = len(result.failed)
    suites = ET.Element("testsuites", name="orchestrator gate", tests=str(len(result.cases)), failures=str(failures))
    suite = ET.SubElement(
        suites, "testsuite", name=f"gate {result.run_id}", tests=str(len(result.cases)), failures=str(failures),
        errors="0", skipped="0", time="0",
    )  # fmt: skip
    for c in result.cases:
        title = TASKS.get(c.task, c.task)
        # Names stay the same from run to run (CI systems keep a test's history by them).
        tc = ET.SubElement(suite, "testcase", classname=c.target, name=title, time="0")
        if c.status == "fail":
            failed = "; ".join(f"{k.name}: {k.message}" for k in c.checks if k.status == "fail")
            ET.SubElement(tc, "failure", message=failed[:1000], type="regression").text = c.message
        else:
            ET.SubElement(tc, "system-out").text = f"against {c.against}: {c.message}"
    ET.indent(suites)
    text: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


def baseline_comparisons(run_dir: Path, report: Report, base_dir: Path, base: Report) -> dict[str, Against]:
    """Each row of ``report`` against the same checkpoint (model, quantization) in ``base``, paired
    per sample on the same prompts; the Average from the tasks both averaged, by MOVER."""
    from orchestrator.report.compare import compare_reports, records_of
    from orchestrator.tasks import build_task
    from orchestrator.verdicts import average_paired, paired_runs_raw

    matched = compare_reports(base, report)["rows"]
    pairs = [(m["a"]["target"], m["b"]["target"]) for m in matched]
    shared = [n for n in report.tasks if n in base.tasks]
    tasks = {n: build_task(n, None, setup=report.setup) for n in shared}
    found = paired_runs_raw(pairs, records_of(base_dir, base, [a for a, _ in pairs]),
                            records_of(run_dir, report, [b for _, b in pairs]), tasks)  # fmt: skip
    rows = {r.target: r for r in report.rows}
    base_rows = {r.target: r for r in base.rows}
    out: dict[str, Against] = {}
    for (a, b), per in zip(pairs, found, strict=True):
        mine = rows[b]
        common = [n for n in mine.average_tasks if n in base_rows[a].average_tasks and n in per and per[n].n]
        average: Paired | None = None
        if common and len(common) == len([n for n in mine.average_tasks if n in base_rows[a].average_tasks]):
            average = per[common[0]] if len(common) == 1 else average_paired([per[n] for n in common], common)
        theirs, own = _out_tok_s(base_rows[a]), _out_tok_s(mine)
        ratio = None if theirs is None or own is None or not theirs else own / theirs
        # KL needs both sides' logprobs on one prompt set: the run's own, against its reference row.
        kl = mine.comparison.divergence if mine.comparison is not None else None
        out[b] = Against(f"{base.run_id}/{a}", per, average, kl, ratio)
    return out


def unmatched(report: Report, comparisons: Mapping[str, Against]) -> Sequence[str]:
    """Rows of the run with no checkpoint of theirs in the baseline."""
    return [r.target for r in report.rows if not r.noise_of and r.target not in comparisons]
