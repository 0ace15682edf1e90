"""What each quantization costs, and how sure we are: intervals, paired comparisons, verdicts.

``target_statistics`` gives one target, from its records: the 95 % interval of every accuracy and
of the Average; whether each task is complete (every sample of the run attempted), the Average
only over complete tasks. ``compare`` then adds to each quantized row of the report its
comparison with the model's reference row (BF16/FP16/F16/FP32/F32): per task
and for the Average the paired difference on the samples both answered, its interval, flips,
changed answers, McNemar's exact p with Holm's correction across every comparison of the run,
recovery, the speed ratio, and a verdict in words. Everything comes from the records on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from orchestrator import divergence, stats
from orchestrator.records import SampleRecord
from orchestrator.registry import MULTIPLE_CHOICE_TASKS, REFERENCE_QUANTS
from orchestrator.stats import Outcomes, Paired
from orchestrator.tasks import Task


def reference_of(group: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
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


def compare(rows: list[dict[str, Any]], sides: Mapping[tuple[str, str], Side]) -> None:
    """Each row against its model's reference row (a noise-floor row against the target it
    repeats): per task and for the Average, added to ``rows`` in place, Holm-corrected across the
    run; then the noise floor. ``sides``: each (target, task)'s outcomes, answers and verdicts."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    family: list[tuple[dict[str, Any], Paired]] = []  # every comparison, for Holm's correction
    singles: list[tuple[dict[str, Any], str]] = []  # comparisons whose Average is their one task

    by_name = {row["target"]: row for row in rows}
    for model, group in by_model.items():
        model_ref = reference_of(group)
        for row in group:
            # A noise-floor row repeats its reference target: compared with that one, like a quantization.
            ref = by_name.get(row["noise_of"]) if row.get("noise_of") else model_ref
            row["reference"] = None if ref is None else ref["target"]
            row["comparison"] = None
            row["comparison_note"] = None
            if ref is None:
                row["comparison_note"] = f"no reference row ({'/'.join(REFERENCE_QUANTS)}) for {model}"
                continue
            if row is ref:
                continue
            cmp: dict[str, Any] = {"tasks": {}, "average": None}
            parts: list[Paired] = []
            pooled = [0, 0, 0, 0]  # n, right->wrong, wrong->right, changed
            kl_all: dict[tuple[str, str], divergence.SampleDivergence] = {}  # every task's paired samples
            kl_k: list[int] = []
            for name in row["tasks"]:
                if name not in ref["tasks"]:
                    continue
                r_side, q_side = sides[(ref["target"], name)], sides[(row["target"], name)]
                r_out, q_out = r_side.outcomes, q_side.outcomes
                p = stats.paired(r_out, q_out, r_side.answers, q_side.answers, r_side.verdicts, q_side.verdicts)
                if r_side.logprobs and q_side.logprobs:
                    found = divergence.divergences(
                        r_side.logprobs, q_side.logprobs, r_side.answers if name in MULTIPLE_CHOICE_TASKS else None
                    )
                    k = min(divergence.k_of(r_side.logprobs), divergence.k_of(q_side.logprobs))
                    seed = stats.seed_for(ref["target"], row["target"], name, "kl")
                    p = dataclasses.replace(p, extra={**p.extra, "divergence": divergence.summarize(found, k, seed)})
                    kl_all.update(((name, sid), d) for sid, d in found.items())
                    kl_k.append(k)
                cmp["tasks"][name] = p
                family.append((cmp["tasks"], p))
                if name in row["average_tasks"] and name in ref["average_tasks"] and p.n:
                    parts.append(p)
                    pooled = [
                        a + b for a, b in zip(pooled, (p.n, p.right_to_wrong, p.wrong_to_right, p.changed), strict=True)
                    ]
            common = [n for n in row["tasks"] if n in row["average_tasks"] and n in ref["average_tasks"]]
            if len(common) == 1 and len(parts) == 1:
                # The Average of one task is that task: the same comparison (one test for Holm).
                singles.append((cmp, common[0]))
            elif parts and len(parts) == len(common):
                ci = stats.paired_average(parts)
                deltas = [cmp["tasks"][n].delta for n in common]
                n, r2w, w2r, changed = pooled
                avg = Paired(
                    n, 0, 0,
                    sum(cmp["tasks"][n_].reference for n_ in common) / len(common),
                    sum(cmp["tasks"][n_].quantized for n_ in common) / len(common),
                    sum(deltas) / len(deltas),
                    ci.bounds,
                    r2w, w2r, changed, stats.mcnemar_exact(r2w, w2r),
                    stats.mdd_of(ci),
                    interval_method=ci.method,
                    interval_note=ci.note,
                    extra={"tasks": common},
                )  # fmt: skip
                cmp["average"] = avg
                family.append((cmp, avg))
            # Over every task's samples: the KLD column.
            cmp["divergence"] = (
                divergence.summarize(kl_all, min(kl_k), stats.seed_for(ref["target"], row["target"], "kl"))
                if kl_all
                else None
            )
            row["comparison"] = cmp
            row["speed_vs_reference"] = _speed_ratios(row["speed"], ref["speed"])
            if not any(p.n for p in cmp["tasks"].values()):
                row["comparison_note"] = f"shares no answered sample with {ref['target']}: nothing to compare"
    adjusted = stats.holm([p.p_value for _, p in family])
    for (holder, p), p_holm in zip(family, adjusted, strict=True):
        final = _judged(p, p_holm)
        for key, value in list(holder.items()):
            if value is p:
                holder[key] = final
    for cmp, name in singles:
        task = cmp["tasks"][name]
        cmp["average"] = dataclasses.replace(task, extra={**task.extra, "tasks": [name]})
    for row in rows:
        done: dict[str, Any] | None = row.get("comparison")
        if done is None:
            continue
        ref_row = next(r for r in rows if r["target"] == row["reference"])
        tasks_json = {}
        for name, p in done["tasks"].items():
            out = p.to_json()
            ref_acc, acc = ref_row["tasks"][name]["accuracy"], row["tasks"][name]["accuracy"]
            out["recovery"] = None if not ref_acc or acc is None else acc / ref_acc
            tasks_json[name] = out
        done["tasks"] = tasks_json
        if done["average"] is not None:
            out = done["average"].to_json()
            out["recovery"] = out["quantized"] / out["reference"] if out["reference"] else None
            done["average"] = out
    for row in rows:
        row["delta_average"] = ((row.get("comparison") or {}).get("average") or {}).get("delta")
    _noise_floor(rows)


def _noise_floor(rows: list[dict[str, Any]]) -> None:
    """Per model, the span of the reference-vs-itself intervals (each task and the Average); a
    quantization's Δ inside it is not told apart from what serving alone changes."""
    for model in {row["model"] for row in rows}:
        noise = [r for r in rows if r["model"] == model and r.get("noise_of") and r.get("comparison")]
        if not noise:
            continue
        bands: dict[str, list[float]] = {}
        for r in noise:
            cmp = r["comparison"]
            for name, p in [*cmp["tasks"].items(), ("average", cmp.get("average"))]:
                if p and p.get("interval"):
                    lo, hi = p["interval"]
                    band = bands.setdefault(name, [lo, hi])
                    band[0], band[1] = min(band[0], lo), max(band[1], hi)
        for r in rows:
            cmp = r.get("comparison")
            if r["model"] != model or r.get("noise_of") or not cmp:
                continue
            r["noise_floor"] = bands
            for name, p in [*cmp["tasks"].items(), ("average", cmp.get("average"))]:
                span = bands.get(name)
                if p is None or span is None or p.get("delta") is None:
                    continue
                p["noise_band"] = span
                p["inside_noise_floor"] = span[0] <= p["delta"] <= span[1]
                if p["inside_noise_floor"]:
                    p["verdict"] += " (inside the noise floor)"


def _judged(p: Paired, p_holm: float) -> Paired:
    """The comparison with its Holm-corrected p-value and its verdict in words."""
    return dataclasses.replace(p, p_holm=p_holm, verdict=stats.verdict(p.delta, p.interval, p_holm, p.n, p.mdd))


def _speed_ratios(speed: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, float | None]:
    """Throughput and latency as multiples of the reference row's."""

    def ratio(key: str) -> float | None:
        a, b = speed.get(key), ref.get(key)
        return None if a is None or not b else a / b

    return {"output_tokens_per_s": ratio("output_tokens_per_s"), "ttft_p50_ms": ratio("ttft_p50_ms")}


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
            final = dataclasses.replace(
                p, p_holm=p_holm, verdict=stats.verdict(p.delta, p.interval, p_holm, p.n, p.mdd)
            )
            row[name] = final.to_json()
        out.append(row)
    return out


__all__ = ["Side", "answers_of", "compare", "paired_runs", "reference_of", "target_statistics", "verdicts_of"]
