"""What each quantization costs, and how sure we are: intervals, paired comparisons, verdicts.

``target_statistics`` gives one target, from its records: the 95 % interval of every accuracy and
of the Average; whether each task is complete (every sample of the run attempted), the Average
only over complete tasks. ``compare`` then gives each quantized row of the report its
comparison with the model's reference row (BF16/FP16/F16/FP32/F32), as objects
(``Compared``, the report model's ``Comparison``; the rows are not changed): per task
and for the Average the paired difference on the samples both answered, its interval, flips,
changed answers, McNemar's exact p with Holm's correction across every comparison of the run,
recovery, the speed ratio, and a verdict in words. Everything comes from the records on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator import divergence, stats
from orchestrator.footprint import footprint_ratios
from orchestrator.records import SampleRecord
from orchestrator.registry import MULTIPLE_CHOICE_TASKS, REFERENCE_QUANTS
from orchestrator.report.model import Comparison, PairedResult
from orchestrator.stats import Outcomes, Paired
from orchestrator.tasks import Task


def reference_of(group: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row a model's quantizations are compared with: its first full-precision row."""
    for quant in REFERENCE_QUANTS:
        for row in group:
            if row["quantization"].upper() == quant and not row.get("noise_of"):
                return row
    return None


def answers_of(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """Each answered sample's extracted answer (IFEval extracts nothing: the reply itself is the
    answer that changed or not)."""
    return {r.id: r.extracted if r.extracted is not None else r.reply for r in records if r.error is None}


def verdicts_of(records: Sequence[SampleRecord]) -> dict[str, bool]:
    """Each answered sample's right/wrong."""
    return {r.id: bool(r.correct) for r in records if r.error is None}


def target_statistics(
    target: str,
    aggregates: Mapping[str, dict[str, Any]],
    records: Mapping[str, Sequence[SampleRecord]],
    tasks: Mapping[str, Task],
    expected: Mapping[str, int],
) -> tuple[dict[str, Outcomes], dict[str, Any]]:
    """One target's own statistics: each task's intervals and completeness, added to its
    aggregate in place, and the Average over its complete tasks. Returns each task's headline
    outcomes and the Average's fields."""
    outcomes: dict[str, Outcomes] = {}
    headline: dict[str, stats.Interval] = {}
    for name, agg in aggregates.items():
        recs = records[name]
        out = tasks[name].outcomes(recs)
        outcomes[name] = out
        ci = headline[name] = stats.interval(out)
        agg["interval"] = ci.listed
        agg["interval_method"] = ci.method
        agg["interval_note"] = ci.note
        agg["intervals"] = {}
        agg["interval_methods"] = {}
        for metric in tasks[name].metrics:
            level = ci if metric == agg.get("headline") else stats.interval(tasks[name].outcomes(recs, metric))
            agg["intervals"][metric] = level.listed
            agg["interval_methods"][metric] = level.method
        want = expected.get(name)
        agg["expected"] = want
        # Complete: every sample of the run was sent and ended (answered or an error record).
        agg["complete"] = bool(agg["n"]) and (want is None or agg["n"] + agg["errors"] >= want)
    complete = [n for n, a in aggregates.items() if a["complete"]]
    missing = [n for n in aggregates if n not in complete]
    average: dict[str, Any] = {
        "average_tasks": complete, "average": None, "average_interval": None, "average_interval_method": "mover"
    }  # fmt: skip
    if aggregates and not missing:
        points = [a["accuracy"] for a in aggregates.values()]
        average["average"] = sum(points) / len(aggregates)
        ci = stats.average_interval(points, [headline[n] for n in aggregates])
        average["average_interval"] = ci.listed
        average["average_interval_method"] = ci.method
        average["average_interval_note"] = ci.note
        average["average_missing"] = None
    else:
        average["average_missing"] = "incomplete: " + ", ".join(
            f"{n} ({a['n'] + a['errors']}/{a['expected'] if a['expected'] is not None else '?'} sent)"
            for n, a in aggregates.items()
            if n in missing
        )
    return outcomes, average


class Side(Protocol):
    """What a comparison needs of one target's task (``summary.TaskSide``)."""

    @property
    def outcomes(self) -> Outcomes: ...
    @property
    def answers(self) -> Mapping[str, Any]: ...
    @property
    def verdicts(self) -> Mapping[str, bool]: ...
    @property
    def logprobs(self) -> Mapping[str, Any]: ...


@dataclass
class Compared:
    """What comparing one row gives it: its reference, the comparison (per task, the Average and
    the divergence), why there is none, its speed against the reference, the noise floor's bands."""

    reference: str | None = None
    comparison: Comparison | None = None
    note: str | None = None
    speed_vs_reference: dict[str, float | None] | None = None
    costs_vs_reference: dict[str, dict[str, float | None]] | None = None
    footprint_vs_reference: dict[str, float | None] | None = None
    noise_floor: dict[str, list[float]] | None = None

    @property
    def delta_average(self) -> float | None:
        """The Average's paired difference, where there is one."""
        cmp = self.comparison
        return None if cmp is None or cmp.average is None else cmp.average.delta

    def fields(self) -> dict[str, Any]:
        """The row's fields in report.json, in its order."""
        out: dict[str, Any] = {
            "reference": self.reference,
            "comparison": None if self.comparison is None else self.comparison.to_json(),
            "comparison_note": self.note,
        }
        if self.speed_vs_reference is not None:
            out["speed_vs_reference"] = self.speed_vs_reference
        if self.costs_vs_reference is not None:
            out["costs_vs_reference"] = self.costs_vs_reference
        if self.footprint_vs_reference is not None:
            out["footprint_vs_reference"] = self.footprint_vs_reference
        out["delta_average"] = self.delta_average
        if self.noise_floor is not None:
            out["noise_floor"] = self.noise_floor
        return out


@dataclass
class _Pending:
    """One row's comparison while the run's p-values wait for Holm's correction."""

    row: Mapping[str, Any]
    ref: Mapping[str, Any]
    tasks: dict[str, Paired] = field(default_factory=dict)
    average: Paired | None = None
    single: str | None = None  # the one task the Average is
    divergence: dict[str, Any] | None = None


def compare(rows: Sequence[Mapping[str, Any]], sides: Mapping[tuple[str, str], Side]) -> dict[str, Compared]:
    """Each row against its model's reference row (a noise-floor row against the target it
    repeats): per task and for the Average, Holm-corrected across the run, then the noise floor.
    ``sides``: each (target, task)'s outcomes, answers and verdicts. Returns each row's
    ``Compared`` by target; the rows are read, never changed."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    by_name = {row["target"]: row for row in rows}
    out: dict[str, Compared] = {}
    pending: list[_Pending] = []
    for model, group in by_model.items():
        model_ref = reference_of(group)
        for row in group:
            # A noise-floor row repeats its reference target: compared with that one, like a quantization.
            ref = by_name.get(row["noise_of"]) if row.get("noise_of") else model_ref
            done = out[row["target"]] = Compared(reference=None if ref is None else ref["target"])
            if ref is None:
                done.note = f"no reference row ({'/'.join(REFERENCE_QUANTS)}) for {model}"
            elif row is not ref:
                pending.append(_pair(row, ref, sides))
                done.speed_vs_reference = _speed_ratios(row.get("speed_phase"), ref.get("speed_phase"))
                done.costs_vs_reference = _cost_changes(row.get("costs") or {}, ref.get("costs") or {})
                done.footprint_vs_reference = footprint_ratios(row.get("footprint"), ref.get("footprint"))
                if not any(p.n for p in pending[-1].tasks.values()):
                    done.note = f"shares no answered sample with {ref['target']}: nothing to compare"
    family = [p for c in pending for p in (*c.tasks.values(), *([c.average] if c.average else []))]
    holm = dict(zip(map(id, family), stats.holm([p.p_value for p in family]), strict=True))
    for c in pending:
        tasks = {name: _result(_judged(p, holm[id(p)]), c.row, c.ref, name) for name, p in c.tasks.items()}
        average: PairedResult | None = None
        if c.single is not None:
            # The Average of one task is that task: the same comparison (one test for Holm).
            task = _judged(c.tasks[c.single], holm[id(c.tasks[c.single])])
            average = _result(dataclasses.replace(task, extra={**task.extra, "tasks": [c.single]}), c.row, c.ref, None)
        elif c.average is not None:
            average = _result(_judged(c.average, holm[id(c.average)]), c.row, c.ref, None)
        out[c.row["target"]].comparison = Comparison(tasks=tasks, average=average, divergence=c.divergence)
    _noise_floor(rows, out)
    return out


def _pair(row: Mapping[str, Any], ref: Mapping[str, Any], sides: Mapping[tuple[str, str], Side]) -> _Pending:
    """A row's paired statistics per task against its reference, the Average's (or the one task it
    is), and the divergence over every task's samples (the KLD column)."""
    c = _Pending(row, ref)
    parts: list[Paired] = []
    kl_all: dict[tuple[str, str], divergence.SampleDivergence] = {}  # every task's paired samples
    kl_k: list[int] = []
    for name in row["tasks"]:
        if name not in ref["tasks"]:
            continue
        r_side, q_side = sides[(ref["target"], name)], sides[(row["target"], name)]
        p = stats.paired(
            r_side.outcomes, q_side.outcomes, r_side.answers, q_side.answers, r_side.verdicts, q_side.verdicts
        )
        if r_side.logprobs and q_side.logprobs:
            found = divergence.divergences(
                r_side.logprobs, q_side.logprobs, r_side.answers if name in MULTIPLE_CHOICE_TASKS else None
            )
            k = min(divergence.k_of(r_side.logprobs), divergence.k_of(q_side.logprobs))
            seed = stats.seed_for(ref["target"], row["target"], name, "kl")
            p = dataclasses.replace(p, extra={**p.extra, "divergence": divergence.summarize(found, k, seed)})
            kl_all.update(((name, sid), d) for sid, d in found.items())
            kl_k.append(k)
        c.tasks[name] = p
        if name in row["average_tasks"] and name in ref["average_tasks"] and p.n:
            parts.append(p)
    common = [n for n in row["tasks"] if n in row["average_tasks"] and n in ref["average_tasks"]]
    if len(common) == 1 and len(parts) == 1:
        c.single = common[0]
    elif parts and len(parts) == len(common):
        c.average = average_paired(parts, common)
    if kl_all:
        c.divergence = divergence.summarize(kl_all, min(kl_k), stats.seed_for(ref["target"], row["target"], "kl"))
    return c


def average_paired(parts: Sequence[Paired], tasks: Sequence[str]) -> Paired:
    """The Average's paired difference from each task's (``parts``, one per task of ``tasks``, each
    with paired samples): the mean of the tasks' figures, its interval by MOVER, the flips pooled."""
    ci = stats.paired_average(parts)
    n, r2w, w2r, changed = (
        sum(getattr(p, k) for p in parts) for k in ("n", "right_to_wrong", "wrong_to_right", "changed")
    )
    return Paired(
        n, 0, 0,
        sum(p.reference or 0.0 for p in parts) / len(parts),
        sum(p.quantized or 0.0 for p in parts) / len(parts),
        sum(p.delta or 0.0 for p in parts) / len(parts),
        ci.bounds,
        r2w, w2r, changed, stats.mcnemar_exact(r2w, w2r),
        stats.mdd_of(ci),
        interval_method=ci.method,
        interval_note=ci.note,
        extra={"tasks": list(tasks)},
    )  # fmt: skip


def _result(p: Paired, row: Mapping[str, Any], ref: Mapping[str, Any], task: str | None) -> PairedResult:
    """A judged comparison with its recovery (the quantized side's share of the reference's
    accuracy): a task's from the two rows' accuracies, the Average's from the paired means."""
    data = p.to_json()
    if task is not None:
        ref_acc, acc = ref["tasks"][task]["accuracy"], row["tasks"][task]["accuracy"]
        data["recovery"] = None if not ref_acc or acc is None else acc / ref_acc
    else:
        data["recovery"] = data["quantized"] / data["reference"] if data["reference"] else None
    return PairedResult.from_json(data)


def _noise_floor(rows: Sequence[Mapping[str, Any]], found: Mapping[str, Compared]) -> None:
    """Per model, the span of the reference-vs-itself intervals (each task and the Average); a
    quantization's Δ inside it is not told apart from what serving alone changes."""
    for model in dict.fromkeys(row["model"] for row in rows):
        noise = [found[r["target"]].comparison for r in rows if r["model"] == model and r.get("noise_of")]
        bands: dict[str, list[float]] = {}
        for cmp in noise:
            if cmp is None:
                continue
            for name, p in [*cmp.tasks.items(), ("average", cmp.average)]:
                if p is not None and p.interval:
                    lo, hi = p.interval
                    band = bands.setdefault(name, [lo, hi])
                    band[0], band[1] = min(band[0], lo), max(band[1], hi)
        if not any(noise):
            continue
        for r in rows:
            done = found[r["target"]]
            cmp = done.comparison
            if r["model"] != model or r.get("noise_of") or cmp is None:
                continue
            done.noise_floor = bands
            for name, p in [*cmp.tasks.items(), ("average", cmp.average)]:
                span = bands.get(name)
                if p is None or span is None or p.delta is None:
                    continue
                p.noise_band = span
                p.inside_noise_floor = span[0] <= p.delta <= span[1]
                if p.inside_noise_floor:
                    p.verdict += " (inside the noise floor)"


def _judged(p: Paired, p_holm: float) -> Paired:
    """The comparison with its Holm-corrected p-value and its verdict in words."""
    return dataclasses.replace(p, p_holm=p_holm, verdict=stats.verdict(p.delta, p.interval, p_holm, p.n, p.mdd))


def _speed_ratios(phase: Mapping[str, Any] | None, ref: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """Throughput and latency as multiples of the reference row's, from both rows' speed phases
    (the same workload on both: never the accuracy pass's timings); None when either has none."""
    from orchestrator.speedphase import batch1_level, main_level

    if not phase or not ref:
        return None

    def ratio(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, key: str) -> float | None:
        x, y = (a or {}).get(key), (b or {}).get(key)
        return None if x is None or not y else x / y

    main, main_ref = main_level(phase), main_level(ref)
    return {
        "output_tokens_per_s": ratio(main, main_ref, "output_tokens_per_s"),
        "ttft_p50_ms": ratio(main, main_ref, "ttft_p50_ms"),
        "tpot_p50_ms": ratio(main, main_ref, "tpot_p50_ms"),
        "batch1_decode_tokens_per_s": ratio(batch1_level(phase), batch1_level(ref), "decode_tokens_per_s"),
    }


# What an answer costs, against the reference: ratios for tokens and seconds, a difference for a share.
COST_RATIOS = ("mean_output_tokens", "p90_output_tokens", "output_tokens_per_correct", "server_seconds_per_correct")


def _cost_changes(costs: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, dict[str, float | None]] | None:
    """Per task both rows answered: each cost as a multiple of the reference's, and the share cut
    at max_tokens as a difference."""
    out: dict[str, dict[str, float | None]] = {}
    for task, mine in costs.items():
        theirs = ref.get(task)
        if not theirs:
            continue
        changes: dict[str, float | None] = {
            key: None if mine.get(key) is None or not theirs.get(key) else mine[key] / theirs[key]
            for key in COST_RATIOS
        }
        changes["cut_at_max_tokens"] = mine["cut_at_max_tokens"] - theirs["cut_at_max_tokens"]
        out[task] = changes
    return out or None


def _digests(records: Sequence[SampleRecord]) -> dict[str, str]:
    return {r.id: r.prompt_digest for r in records if r.answered}


def paired_runs(
    pairs: Sequence[tuple[str, str]],
    records_a: Mapping[str, Mapping[str, Sequence[SampleRecord]]],
    records_b: Mapping[str, Mapping[str, Sequence[SampleRecord]]],
    tasks: Mapping[str, Task],
) -> list[dict[str, Any]]:
    """Two runs of the same checkpoints (e.g. two backends): per matched (target in A, target in B)
    and task, B against A paired on the samples both answered with the same prompt (same id and
    prompt digest; the others are counted as one side only), Holm-corrected across all of them."""
    return [
        {name: p.to_json() for name, p in per.items()} for per in paired_runs_raw(pairs, records_a, records_b, tasks)
    ]


def paired_runs_raw(
    pairs: Sequence[tuple[str, str]],
    records_a: Mapping[str, Mapping[str, Sequence[SampleRecord]]],
    records_b: Mapping[str, Mapping[str, Sequence[SampleRecord]]],
    tasks: Mapping[str, Task],
) -> list[dict[str, Paired]]:
    """``paired_runs`` as ``Paired`` objects, judged (Holm across every pair and task)."""
    found: list[dict[str, Paired]] = []
    for ta, tb in pairs:
        per_task: dict[str, Paired] = {}
        for name, task in tasks.items():
            ra, rb = records_a.get(ta, {}).get(name), records_b.get(tb, {}).get(name)
            if not ra or not rb:
                continue
            da, db = _digests(ra), _digests(rb)
            same = {sid for sid in da if db.get(sid) == da[sid]}
            oa = task.outcomes([r for r in ra if r.id in same])
            ob = task.outcomes([r for r in rb if r.id in same])
            p = stats.paired(oa, ob, answers_of(ra), answers_of(rb), verdicts_of(ra), verdicts_of(rb))
            per_task[name] = dataclasses.replace(
                p, only_reference=len(da) - len(same), only_quantized=len(db) - len(same)
            )
        found.append(per_task)
    flat = [p for per in found for p in per.values()]
    adjusted = iter(stats.holm([p.p_value for p in flat]))
    out = []
    for per in found:
        row = {}
        for name, p in per.items():
            p_holm = next(adjusted)
            row[name] = dataclasses.replace(
                p, p_holm=p_holm, verdict=stats.verdict(p.delta, p.interval, p_holm, p.n, p.mdd)
            )
        out.append(row)
    return out


__all__ = [
    "Compared",
    "Side",
    "answers_of",
    "average_paired",
    "compare",
    "paired_runs",
    "paired_runs_raw",
    "reference_of",
    "target_statistics",
    "verdicts_of",
]
