"""Intervals, paired comparisons and verdicts, from per-sample outcomes.

A task's metric is a ratio of sums over samples grouped in strata (subjects): ``micro`` is
Σnum / Σden over every sample, ``macro`` the mean over strata of each stratum's Σnum / Σden. An
accuracy has num = 1 if right, den = 1; IFEval's instruction level has num = instructions
followed, den = instructions of the prompt (so resampling prompts clusters instructions by
prompt). Every interval is a percentile bootstrap stratified like the metric (samples resampled
within their stratum, tasks independently), except a micro accuracy's own interval, which is
Wilson's. A resample is drawn as multinomial counts over a stratum's distinct outcome tuples,
which is the same distribution as drawing samples with replacement and costs O(distinct) per
replicate instead of O(n).

A paired comparison (quantized vs reference) keeps the samples both answered and resamples them
together; its p-value is McNemar's exact test (a two-sided binomial test on the discordant
pairs), corrected with Holm's method across every comparison of a run. Seeds derive from the
names compared, so a report is the same byte for byte each time it is built.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.96
Z_POWER = NormalDist().inv_cdf(0.80)  # 80 % power
RESAMPLES = 2000
EQUIVALENCE = 0.01  # an interval inside ±1 point is "no detectable change"
ALPHA = 0.05


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c trials at 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (n can be tens of thousands).
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def seed_for(*names: str) -> int:
    """A stable seed from names (the same report, the same resamples)."""
    return zlib.crc32("\x1f".join(names).encode("utf-8"))


@dataclass(frozen=True)
class Outcomes:
    """One task's per-sample outcomes on one side: num/den per sample id, with its stratum."""

    kind: str  # "micro" or "macro"
    values: Mapping[str, tuple[str, float, float]]  # id -> (stratum, num, den)

    def point(self, ids: Sequence[str] | None = None) -> float | None:
        """The metric over ``ids`` (all by default)."""
        keys = list(self.values) if ids is None else ids
        by: dict[str, list[float]] = {}
        for sid in keys:
            stratum, num, den = self.values[sid]
            acc = by.setdefault(stratum, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
        return _combine(self.kind, [(n, d) for n, d in by.values()])


def _combine(kind: str, sums: Sequence[tuple[float, float]]) -> float | None:
    if not sums:
        return None
    if kind == "macro":
        return sum(n / d for n, d in sums if d) / len(sums)
    total = sum(d for _, d in sums)
    return sum(n for n, _ in sums) / total if total else None


def _strata(ids: Sequence[str], sides: Sequence[Outcomes]) -> dict[str, list[tuple[float, ...]]]:
    """Per stratum, each sample's (num_a, den_a, num_b, den_b, ...) across sides."""
    out: defaultdict[str, list[tuple[float, ...]]] = defaultdict(list)
    if len(sides) == 1:  # the common case, kept to one lookup per sample
        values = sides[0].values
        for sid in ids:
            stratum, num, den = values[sid]
            out[stratum].append((num, den))
        return out
    for sid in ids:
        stratum = sides[0].values[sid][0]
        row: list[float] = []
        for side in sides:
            _, num, den = side.values[sid]
            row += [num, den]
        out[stratum].append(tuple(row))
    return out


def _replicates(
    kind: str, ids: Sequence[str], sides: Sequence[Outcomes], rng: np.random.Generator, b: int
) -> np.ndarray:
    """(b, len(sides)) bootstrap replicates of the metric on each side, resampling samples together."""
    return _replicates_by_kind(ids, sides, rng, b)[kind]


def _replicates_by_kind(
    ids: Sequence[str], sides: Sequence[Outcomes], rng: np.random.Generator, b: int
) -> dict[str, np.ndarray]:
    """The micro and the macro replicates of one draw (the same resampled samples)."""
    strata = _strata(ids, sides)
    width = 2 * len(sides)
    if not strata:
        empty = np.full((b, len(sides)), np.nan)
        return {"micro": empty, "macro": empty}
    # Every stratum in one draw: its distinct outcome tuples (padded to the widest stratum with
    # probability 0) and their frequencies; counts (b, strata, distinct) times values (strata,
    # distinct, width) give each replicate's Σnum and Σden per stratum and side.
    tallies = [Counter(rows) for rows in strata.values()]
    k = max(len(t) for t in tallies)
    values = np.zeros((len(tallies), k, width))
    probs = np.zeros((len(tallies), k))
    sizes = np.zeros(len(tallies), dtype=np.int64)
    for i, tally in enumerate(tallies):
        values[i, : len(tally)] = np.asarray(list(tally), dtype=float).reshape(-1, width)
        counts = np.fromiter(tally.values(), dtype=float, count=len(tally))
        probs[i, : len(tally)] = counts / counts.sum()
        sizes[i] = counts.sum()
    draws = rng.multinomial(sizes, probs, size=(b, len(tallies)))  # (b, strata, distinct)
    # A batched product per stratum: (strata, b, distinct) @ (strata, distinct, width).
    sums = np.matmul(draws.transpose(1, 0, 2).astype(float), values).transpose(1, 0, 2)  # (b, strata, width)
    s_num, s_den = sums[..., 0::2], sums[..., 1::2]  # (b, strata, sides)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_stratum = np.where(s_den > 0, s_num / np.where(s_den > 0, s_den, 1), 0.0)
        nums, dens = s_num.sum(axis=1), s_den.sum(axis=1)
        return {
            "micro": np.asarray(np.where(dens > 0, nums / np.where(dens > 0, dens, 1), np.nan)),
            "macro": np.asarray(per_stratum.mean(axis=1)),
        }


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return (float(lo), float(hi))


def replicates(outcomes: Outcomes, seed: int, b: int = RESAMPLES) -> dict[str, np.ndarray]:
    """(b,) bootstrap replicates of one side's metric, stratified: micro and macro of the same draw."""
    drawn = _replicates_by_kind(list(outcomes.values), [outcomes], np.random.default_rng(seed), b)
    return {kind: reps[:, 0] for kind, reps in drawn.items()}


def interval(
    outcomes: Outcomes, seed: int, b: int = RESAMPLES, reps: np.ndarray | None = None
) -> tuple[float, float] | None:
    """95 % interval of one side's metric: Wilson for a micro accuracy, else the stratified
    bootstrap (``reps``: its replicates, when already drawn)."""
    ids = list(outcomes.values)
    if not ids:
        return None
    dens = [v[2] for v in outcomes.values.values()]
    if outcomes.kind == "micro" and all(d == 1 for d in dens):
        k = sum(int(v[1]) for v in outcomes.values.values())
        return wilson(k, len(ids))
    return _percentile_interval(replicates(outcomes, seed, b)[outcomes.kind] if reps is None else reps)


def average_interval(
    tasks: Sequence[Outcomes], seed: int, b: int = RESAMPLES, reps: Sequence[np.ndarray] | None = None
) -> tuple[float, float] | None:
    """95 % interval of the mean of task metrics (the Average column): tasks resampled
    independently (``reps``: each task's replicates, when already drawn)."""
    if not tasks or any(not t.values for t in tasks):
        return None
    if reps is None:
        rng = np.random.default_rng(seed)
        reps = [_replicates(t.kind, list(t.values), [t], rng, b)[:, 0] for t in tasks]
    return _percentile_interval(np.sum(reps, axis=0) / len(tasks))


@dataclass(frozen=True)
class Paired:
    """A quantized side against its reference on the samples both answered."""

    n: int  # samples paired
    only_reference: int  # answered by the reference alone (not paired)
    only_quantized: int
    reference: float | None  # the metric on the paired samples
    quantized: float | None
    delta: float | None  # quantized - reference
    interval: tuple[float, float] | None
    right_to_wrong: int  # flips (Dutta et al.): the reference was right, the quantized side wrong
    wrong_to_right: int
    changed: int  # extracted answers that differ, right or wrong
    p_value: float  # exact McNemar on the discordant pairs
    mdd: float | None  # minimum detectable difference at 80 % power for this n and discordance
    p_holm: float | None = None
    verdict: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # The bootstrap replicates of the difference (for the Average's; not written anywhere).
    diffs: Any = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Plain data for report.json."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("extra", "diffs")}
        out["flip_rate"] = (self.right_to_wrong + self.wrong_to_right) / self.n if self.n else None
        out["changed_rate"] = self.changed / self.n if self.n else None
        return {**out, **self.extra}


def paired(
    reference: Outcomes,
    quantized: Outcomes,
    ref_answers: Mapping[str, Any],
    quant_answers: Mapping[str, Any],
    ref_verdicts: Mapping[str, bool],
    quant_verdicts: Mapping[str, bool],
    seed: int,
    b: int = RESAMPLES,
) -> Paired:
    """Paired difference of a task's metric, its interval, flips, McNemar's p and the MDD.

    ``*_verdicts`` are each sample's right/wrong (an IFEval prompt: all strict instructions
    followed), which flips and McNemar count; ``*_answers`` the extracted answers.
    """
    common = [sid for sid in reference.values if sid in quantized.values]
    only_ref = len(reference.values) - len(common)
    only_quant = len(quantized.values) - len(common)
    r2w = sum(1 for s in common if ref_verdicts[s] and not quant_verdicts[s])
    w2r = sum(1 for s in common if quant_verdicts[s] and not ref_verdicts[s])
    changed = sum(1 for s in common if ref_answers.get(s) != quant_answers.get(s))
    p = mcnemar_exact(r2w, w2r)
    if not common:
        return Paired(0, only_ref, only_quant, None, None, None, None, 0, 0, 0, 1.0, None)
    ref_point = reference.point(common)
    quant_point = quantized.point(common)
    delta = None if ref_point is None or quant_point is None else quant_point - ref_point
    rng = np.random.default_rng(seed)
    whole = all(reference.values[s][2] == 1 and quantized.values[s][2] == 1 for s in common)
    if whole:
        # One outcome per sample (right or wrong): each stratum's difference is Σ(q - r) / n, so
        # resampling the per-sample difference (-1, 0, +1) gives the same replicates as both sides
        # together, at two binomial draws per stratum instead of three.
        change = {s: (reference.values[s][0], quantized.values[s][1] - reference.values[s][1], 1.0) for s in common}
        diffs = _replicates(reference.kind, common, [Outcomes(reference.kind, change)], rng, b)[:, 0]
    else:
        reps = _replicates(reference.kind, common, [reference, quantized], rng, b)
        diffs = reps[:, 1] - reps[:, 0]
    ci = _percentile_interval(diffs)
    binary = reference.kind == "micro" and whole
    # A binary metric: the paired test's standard error for this n and the observed discordance
    # (at least one discordant pair, so that no discordance yet is not "any change would show").
    discordance = max(r2w + w2r, 1) / len(common)
    se = math.sqrt(discordance / len(common)) if binary else float(np.nanstd(diffs))
    mdd = (Z + Z_POWER) * se
    return Paired(
        len(common), only_ref, only_quant, ref_point, quant_point, delta, ci, r2w, w2r, changed, p, mdd, diffs=diffs
    )


def paired_average(
    parts: Sequence[tuple[Outcomes, Outcomes]],
    seed: int,
    b: int = RESAMPLES,
    diffs: Sequence[np.ndarray | None] | None = None,
) -> tuple[tuple[float, float], float] | None:
    """Interval (and bootstrap standard error) of the paired difference of the Average over tasks,
    each task paired on its common samples and resampled independently of the others (``diffs``:
    each task's replicates of its difference, when ``paired`` drew them already)."""
    if not parts:
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(b)
    for i, (ref, quant) in enumerate(parts):
        drawn = None if diffs is None else diffs[i]
        if drawn is None:
            common = [sid for sid in ref.values if sid in quant.values]
            if not common:
                return None
            reps = _replicates(ref.kind, common, [ref, quant], rng, b)
            drawn = reps[:, 1] - reps[:, 0]
        total = total + drawn
    mean = total / len(parts)
    return _percentile_interval(mean), float(np.nanstd(mean))


def verdict(
    delta: float | None, ci: tuple[float, float] | None, p_holm: float | None, n: int, mdd: float | None
) -> str:
    """What a user reads: loss, gain, no detectable change, or inconclusive (with what would show)."""
    if delta is None or ci is None or n == 0:
        return "not compared"
    significant = p_holm is not None and p_holm < ALPHA and not ci[0] <= 0.0 <= ci[1]
    if significant:
        return "loss" if delta < 0 else "gain"
    if ci[0] >= -EQUIVALENCE and ci[1] <= EQUIVALENCE:
        return "no detectable change"
    shown = f"{100 * mdd:.1f}" if mdd is not None else "?"
    return f"inconclusive — n too small: with {n} samples, only a change > {shown} points would show"


__all__ = [
    "Outcomes",
    "Paired",
    "average_interval",
    "holm",
    "interval",
    "mcnemar_exact",
    "paired",
    "paired_average",
    "replicates",
    "seed_for",
    "verdict",
    "wilson",
]
