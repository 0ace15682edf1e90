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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
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


@dataclass(frozen=True, eq=False)
class Outcomes:
    """One task's per-sample outcomes on one side, by column: each answered sample's id, its
    stratum (subject), and its num/den (right = 1/1; IFEval's instruction level followed/given)."""

    kind: str  # "micro" or "macro"
    ids: Sequence[str]
    strata: Sequence[str]
    num: np.ndarray
    den: np.ndarray

    @classmethod
    def from_values(cls, kind: str, values: Mapping[str, tuple[str, float, float]]) -> Outcomes:
        """From a mapping id -> (stratum, num, den)."""
        rows = list(values.values())
        return cls(
            kind,
            list(values),
            [r[0] for r in rows],
            np.fromiter((r[1] for r in rows), dtype=float, count=len(rows)),
            np.fromiter((r[2] for r in rows), dtype=float, count=len(rows)),
        )

    @property
    def values(self) -> dict[str, tuple[str, float, float]]:
        """id -> (stratum, num, den)."""
        return {
            sid: (s, float(n), float(d)) for sid, s, n, d in zip(self.ids, self.strata, self.num, self.den, strict=True)
        }

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def index(self) -> dict[str, int]:
        """Each sample id's position."""
        return {sid: i for i, sid in enumerate(self.ids)}

    @cached_property
    def codes(self) -> np.ndarray:
        """Each sample's stratum as an integer."""
        seen: dict[str, int] = {}
        return np.fromiter((seen.setdefault(s, len(seen)) for s in self.strata), dtype=np.int64, count=len(self.ids))

    @cached_property
    def binary(self) -> bool:
        """One right-or-wrong outcome per sample (den 1 everywhere)."""
        return bool(np.all(self.den == 1))

    def same_samples(self, other: Outcomes) -> bool:
        """The same samples with the same outcomes (two metrics that differ only in how they average)."""
        return (
            list(self.ids) == list(other.ids)
            and np.array_equal(self.num, other.num)
            and np.array_equal(self.den, other.den)
        )

    def point(self, at: np.ndarray | None = None) -> float | None:
        """The metric over the samples at positions ``at`` (all by default)."""
        codes, num, den = (
            (self.codes, self.num, self.den) if at is None else (self.codes[at], self.num[at], self.den[at])
        )
        if not len(codes):
            return None
        if self.kind == "macro":
            present = np.unique(codes)
            n_by = np.bincount(codes, weights=num)[present]
            d_by = np.bincount(codes, weights=den)[present]
            return float(np.sum(np.divide(n_by, d_by, out=np.zeros_like(n_by), where=d_by != 0)) / len(present))
        total = float(den.sum())
        return float(num.sum()) / total if total else None


def _positions(sides: Sequence[Outcomes], ids: Sequence[str]) -> list[np.ndarray]:
    """Each side's positions of ``ids``."""
    return [np.fromiter((side.index[s] for s in ids), dtype=np.int64, count=len(ids)) for side in sides]


def _binomial(rng: np.random.Generator, n: np.ndarray, p: np.ndarray, b: int) -> np.ndarray:
    """(b, len(n)) draws of Binomial(n[s], p[s]) by inverting each one's CDF.

    Exact like ``rng.binomial`` but ~5x faster here: the replicates need b draws of the same few
    dozen (n, p), so one table per stratum and a binary search per draw beat a rejection sampler
    set up for every draw.
    """
    out = np.zeros((b, len(n)), dtype=np.int64)
    full = (p >= 1) & (n > 0)
    out[:, full] = n[full]
    live = np.flatnonzero((p > 0) & (p < 1) & (n > 0))
    if not len(live):
        return out
    nl, pl = n[live], p[live]
    sizes = nl + 1
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    seg = np.repeat(np.arange(len(live)), sizes)
    k = np.arange(int(sizes.sum())) - starts[seg]
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, int(nl.max()) + 1)))))
    nn = nl[seg]
    log_pmf = log_fact[nn] - log_fact[k] - log_fact[nn - k] + k * np.log(pl)[seg] + (nn - k) * np.log1p(-pl)[seg]
    pmf = np.exp(log_pmf - np.maximum.reduceat(log_pmf, starts)[seg])
    u = rng.random((b, len(live)))
    for j, s in enumerate(live):
        cdf = np.cumsum(pmf[starts[j] : starts[j] + sizes[j]])
        out[:, s] = np.minimum(np.searchsorted(cdf, u[:, j] * cdf[-1], side="right"), nl[j])
    return out


def _counts(rng: np.random.Generator, sizes: np.ndarray, probs: np.ndarray, b: int) -> np.ndarray:
    """(b, strata, k) multinomial counts: each stratum's size spread over its k outcomes."""
    k = probs.shape[1]
    if k == 1:
        return np.broadcast_to(sizes[None, :, None], (b, len(sizes), 1))
    if k > 3:
        return rng.multinomial(sizes, probs, size=(b, len(sizes)))
    # Two or three outcomes (right/wrong; a paired difference -1/0/+1): the likeliest outcome's
    # count is binomial, the next one's binomial in the few that are left (the same distribution
    # as the multinomial; numpy's sampler is quick for those small counts).
    order = np.argsort(-probs, axis=1, kind="stable")
    p = np.take_along_axis(probs, order, axis=1)
    first = _binomial(rng, sizes, p[:, 0], b)
    if k == 2:
        drawn = np.stack([first, sizes - first], axis=-1)
    else:
        rest = sizes - first
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.clip(np.where(p[:, 0] < 1, p[:, 1] / (1 - p[:, 0]), 0.0), 0.0, 1.0)
        second = rng.binomial(rest, q)
        drawn = np.stack([first, second, rest - second], axis=-1)
    out = np.empty_like(drawn)
    np.put_along_axis(out, np.broadcast_to(order[None], drawn.shape), drawn, axis=2)
    return out


def _draw(codes: np.ndarray, cols: np.ndarray, rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    """Micro and macro replicates (b, sides) of one stratified draw over the samples whose stratum
    codes are ``codes`` and whose (num, den) per side are the columns of ``cols``."""
    width = cols.shape[1]
    sides = width // 2
    if not len(codes):
        empty = np.full((b, sides), np.nan)
        return {"micro": empty, "macro": empty}
    # Strata present, numbered 0..S-1; each sample's outcome row reduced to one integer key that
    # sorts by stratum first (factorised column by column so that it never overflows).
    _, key = np.unique(codes, return_inverse=True)
    strata_of = key.copy()
    for j in range(width):
        levels, level = np.unique(cols[:, j], return_inverse=True)
        _, key = np.unique(key * len(levels) + level, return_inverse=True)
    _, first, tally = np.unique(key, return_index=True, return_counts=True)
    stratum = strata_of[first]  # the distinct outcome rows, grouped by stratum
    n_strata = int(strata_of.max()) + 1
    sizes = np.bincount(strata_of, minlength=n_strata)
    begin = np.searchsorted(stratum, np.arange(n_strata))
    rank = np.arange(len(first)) - begin[stratum]
    k = int(rank.max()) + 1
    values = np.zeros((n_strata, k, width))
    probs = np.zeros((n_strata, k))
    values[stratum, rank] = cols[first]
    probs[stratum, rank] = tally / sizes[stratum]
    draws = _counts(rng, sizes, probs, b)  # (b, strata, k)
    # A batched product per stratum: (strata, b, k) @ (strata, k, width) -> each replicate's Σnum
    # and Σden per stratum and side.
    sums = np.matmul(draws.transpose(1, 0, 2).astype(float), values).transpose(1, 0, 2)  # (b, strata, width)
    s_num, s_den = sums[..., 0::2], sums[..., 1::2]  # (b, strata, sides)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_stratum = np.where(s_den > 0, s_num / np.where(s_den > 0, s_den, 1), 0.0)
        nums, dens = s_num.sum(axis=1), s_den.sum(axis=1)
        return {
            "micro": np.asarray(np.where(dens > 0, nums / np.where(dens > 0, dens, 1), np.nan)),
            "macro": np.asarray(per_stratum.mean(axis=1)),
        }


def _side_columns(sides: Sequence[Outcomes], at: Sequence[np.ndarray]) -> np.ndarray:
    return np.column_stack([c for side, pos in zip(sides, at, strict=True) for c in (side.num[pos], side.den[pos])])


def _replicates(
    kind: str, ids: Sequence[str], sides: Sequence[Outcomes], rng: np.random.Generator, b: int
) -> np.ndarray:
    """(b, len(sides)) bootstrap replicates of the metric on each side, resampling samples together."""
    at = _positions(sides, ids)
    return _draw(sides[0].codes[at[0]], _side_columns(sides, at), rng, b)[kind]


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return (float(lo), float(hi))


def replicates(outcomes: Outcomes, seed: int, b: int = RESAMPLES) -> dict[str, np.ndarray]:
    """(b,) bootstrap replicates of one side's metric, stratified: micro and macro of the same draw."""
    cols = np.column_stack([outcomes.num, outcomes.den])
    drawn = _draw(outcomes.codes, cols, np.random.default_rng(seed), b)
    return {kind: reps[:, 0] for kind, reps in drawn.items()}


def interval(
    outcomes: Outcomes, seed: int, b: int = RESAMPLES, reps: np.ndarray | None = None
) -> tuple[float, float] | None:
    """95 % interval of one side's metric: Wilson for a micro accuracy, else the stratified
    bootstrap (``reps``: its replicates, when already drawn)."""
    if not len(outcomes):
        return None
    if outcomes.kind == "micro" and outcomes.binary:
        return wilson(int(outcomes.num.sum()), len(outcomes))
    return _percentile_interval(replicates(outcomes, seed, b)[outcomes.kind] if reps is None else reps)


def average_interval(
    tasks: Sequence[Outcomes], seed: int, b: int = RESAMPLES, reps: Sequence[np.ndarray] | None = None
) -> tuple[float, float] | None:
    """95 % interval of the mean of task metrics (the Average column): tasks resampled
    independently (``reps``: each task's replicates, when already drawn)."""
    if not tasks or any(not len(t) for t in tasks):
        return None
    if reps is None:
        rng = np.random.default_rng(seed)
        reps = [_replicates(t.kind, t.ids, [t], rng, b)[:, 0] for t in tasks]
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


def _common(reference: Outcomes, quantized: Outcomes) -> list[str]:
    """The sample ids both sides answered, in the reference's order."""
    theirs = quantized.index
    return [sid for sid in reference.ids if sid in theirs]


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
    common = _common(reference, quantized)
    only_ref = len(reference) - len(common)
    only_quant = len(quantized) - len(common)
    if not common:
        return Paired(0, only_ref, only_quant, None, None, None, None, 0, 0, 0, 1.0, None)
    ir, iq = _positions([reference, quantized], common)
    v_ref = np.fromiter((bool(ref_verdicts[s]) for s in common), dtype=bool, count=len(common))
    v_quant = np.fromiter((bool(quant_verdicts[s]) for s in common), dtype=bool, count=len(common))
    r2w = int(np.sum(v_ref & ~v_quant))
    w2r = int(np.sum(v_quant & ~v_ref))
    changed = sum(1 for s in common if ref_answers.get(s) != quant_answers.get(s))
    p = mcnemar_exact(r2w, w2r)
    ref_point = reference.point(ir)
    quant_point = quantized.point(iq)
    delta = None if ref_point is None or quant_point is None else quant_point - ref_point
    rng = np.random.default_rng(seed)
    codes = reference.codes[ir]
    whole = bool(np.all(reference.den[ir] == 1) and np.all(quantized.den[iq] == 1))
    if whole:
        # One outcome per sample (right or wrong): each stratum's difference is Σ(q - r) / n, so
        # resampling the per-sample difference (-1, 0, +1) gives the same replicates as both sides
        # together, with one column instead of two.
        change = quantized.num[iq] - reference.num[ir]
        diffs = _draw(codes, np.column_stack([change, np.ones(len(common))]), rng, b)[reference.kind][:, 0]
    else:
        reps = _draw(codes, _side_columns([reference, quantized], [ir, iq]), rng, b)[reference.kind]
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
            common = _common(ref, quant)
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
