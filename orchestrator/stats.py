"""Intervals, paired comparisons and verdicts, from per-sample outcomes.

A task's metric is a ratio of sums over samples grouped in strata (subjects): ``micro`` is
Σnum / Σden over every sample, ``macro`` the mean over strata of each stratum's Σnum / Σden. An
accuracy has num = 1 if right, den = 1; IFEval's instruction level has num = instructions
followed, den = instructions of the prompt (a prompt is a cluster of instructions). Both are one
weighted ratio Σ w·num / Σ w·den with Σ w·den = 1: w = 1 / Σden (micro) or 1 / (S · Σden of the
sample's stratum) (macro, S strata).

Why these intervals (each checked by simulation against known truth, ``tests/test_coverage.py``,
at 1, 2 and 3 samples per subject, one subject, unequal subjects, accuracies near 0.05, 0.5 and
0.95, and tasks mixed in the Average). A percentile bootstrap stratified by subject, which this
module used before, resamples a subject of one sample to itself: at one sample per subject
(the embedded default) it gave zero-width intervals, at two it halved the variance. Every
interval here is analytic and has a floor that no small sample can take away:

- one accuracy, micro: Wilson's score interval (Brown, Cai & DasGupta 2001 recommend it at every
  n; unlike Wald's it is never zero-width at 0 % or 100 %);
- one accuracy, macro: Wilson's interval with Kish's effective sample size 1 / Σw² (the weights'
  design effect, Kish 1965), the design effect of the strata themselves taken as 1 (Korn &
  Graubard 1998 truncate it there). Within-subject variances cannot be estimated from one
  sample per subject, and the variance they would give is never larger than this one (it is
  smaller by the spread of the subjects' accuracies, which is modest on MMLU and C-Eval), so
  the interval is honest at every subject size and only slightly conservative;
- a ratio of clustered counts (IFEval's instruction level): Wilson's interval with Korn &
  Graubard's effective sample size p(1 - p) / v, v the linearised (ratio-estimator) variance
  over prompts, scaled by (z / t)² with t Student's for prompts - 1 degrees of freedom (the
  variance is estimated from that few prompts), capped at the number of instructions;
- the Average of tasks, and the Average's paired difference: MOVER (Zou & Donner 2008, the
  general form of Newcombe's square-and-add): the tasks' own limits combined, tasks
  independent, so each task keeps its own asymmetry near 0 or 1;
- a paired difference of right/wrong outcomes (quantized vs reference): Bonett & Price's
  adjusted Wald interval (2012; recommended by Fagerland, Lydersen & Laake 2013): one
  discordant pair added each way, so no flips or one flip still gives an honest, non-zero
  width; on Kish's effective counts for a macro average;
- a paired difference of clustered ratios: the linearised paired variance plus the same two
  pseudo-pairs, Student's t.

Fewer than two samples (or paired samples, or prompts) give no interval, and the note says why.
The minimum detectable difference comes from the same interval: (z + z_power) × its standard
error. A paired comparison's p-value is McNemar's exact test (a two-sided binomial test on the
discordant pairs; pooled over strata it is the Cochran–Mantel–Haenszel test of matched pairs),
corrected with Holm's method across every comparison of a run. Nothing here is random: the same
records give the same report, byte for byte.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.96
Z_POWER = NormalDist().inv_cdf(0.80)  # 80 % power
EQUIVALENCE = 0.01  # an interval inside ±1 point is "no detectable change"
ALPHA = 0.05
MIN_SAMPLES = 2  # below this no interval is honest: one outcome says nothing of its own spread

# Each interval method, named once: report.json names a figure's method, the reports explain it.
METHODS: dict[str, str] = {
    "wilson": "Wilson score interval",
    "wilson-kish": "Wilson score interval on Kish's effective sample size of the subject weights "
    "(subjects' design effect taken as 1)",
    "wilson-cluster": "Wilson score interval on the effective sample size of the prompt-clustered "
    "(linearised) variance, t-adjusted for the number of prompts",
    "mover": "MOVER: the tasks' own intervals combined (tasks independent)",
    "bonett-price": "Bonett–Price adjusted Wald interval for paired outcomes (one discordant pair added "
    "each way), on Kish's effective counts",
    "linearized-t": "linearised paired variance with one discordant pair added each way, Student's t",
    "bootstrap": "percentile bootstrap of the mean over samples",
}


def wilson(k: float, n: float, z: float = Z) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (n may be an effective, fractional size), with
    Brown, Cai & DasGupta's modification near 0 and 1: for 0 < k ≤ k* (k* = 2 up to n = 50, 3
    above) the lower limit is the exact Poisson one, and likewise the upper limit for n - k,
    which removes Wilson's coverage dips at a few successes or failures."""
    if n <= 0:
        return None
    k = min(float(n), max(0.0, float(k)))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    edge = 2.0 if n <= 50 else 3.0
    if 0 < k <= edge and z == Z:
        lo = min(lo, _poisson_lower(k) / n)
    if 0 < n - k <= edge and z == Z:
        hi = max(hi, 1.0 - _poisson_lower(n - k) / n)
    return (lo, hi)


@lru_cache(maxsize=256)
def _poisson_lower(k: float) -> float:
    """The exact (Garwood) lower limit of a Poisson mean from k events, at the run's confidence."""
    return float(_special().gammaincinv(k, (1 - CONFIDENCE) / 2))


@cache
def _special() -> Any:
    """scipy.special, imported only when an interval needs it (it costs up to a second)."""
    import scipy.special  # type: ignore[import-untyped]

    return scipy.special


@cache
def t_quantile(df: int) -> float:
    """Student's t quantile for the run's confidence."""
    return float(_special().stdtrit(df, 0.5 + CONFIDENCE / 2))


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

    def weights(self, at: np.ndarray | None = None) -> np.ndarray:
        """Each sample's weight w in the metric Σ w·num / Σ w·den (Σ w·den = 1), over the samples
        at positions ``at`` (all by default)."""
        codes, den = (self.codes, self.den) if at is None else (self.codes[at], self.den[at])
        return weights(self.kind, codes, den)

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


def weights(kind: str, codes: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-sample weights w of a micro or macro metric, Σ w·num / Σ w·den with Σ w·den = 1."""
    if not len(codes):
        return np.zeros(0)
    if kind == "macro":
        present, stratum = np.unique(codes, return_inverse=True)
        d_by = np.bincount(stratum, weights=den)
        per = np.zeros(len(present))
        np.divide(1.0, len(present) * d_by, out=per, where=d_by > 0)
        return np.asarray(per[stratum])
    total = float(den.sum())
    return np.full(len(codes), 1.0 / total if total else 0.0)


@dataclass(frozen=True)
class Interval:
    """A 95 % interval, the method that made it (a key of ``METHODS``), or why there is none."""

    bounds: tuple[float, float] | None
    method: str
    note: str | None = None

    @property
    def listed(self) -> list[float] | None:
        """The bounds as report.json writes them."""
        return None if self.bounds is None else [self.bounds[0], self.bounds[1]]

    @property
    def se(self) -> float | None:
        """The standard error the interval implies (its width over 2z)."""
        return None if self.bounds is None else (self.bounds[1] - self.bounds[0]) / (2 * Z)


def _too_few(n: int, method: str, what: str) -> Interval:
    return Interval(None, method, f"{n} {what}{'' if n == 1 else 's'}: too few for an interval")


def _is_binary(num: np.ndarray, den: np.ndarray) -> bool:
    return bool(np.all(den == 1) and np.all((num == 0) | (num == 1)))


def interval(outcomes: Outcomes) -> Interval:
    """95 % interval of one side's metric (the module's docstring says why each method)."""
    binary = _is_binary(outcomes.num, outcomes.den)
    method = ("wilson" if outcomes.kind == "micro" else "wilson-kish") if binary else "wilson-cluster"
    n = len(outcomes)
    if n < MIN_SAMPLES:
        return _too_few(n, method, "sample" if binary else "prompt")
    w = outcomes.weights()
    theta = float(np.dot(w, outcomes.num))
    if binary:
        # Kish's effective size of the weights: N for a micro average or subjects of equal size.
        n_eff = 1.0 / float(np.dot(w, w))
        return Interval(wilson(theta * n_eff, n_eff), method)
    return Interval(_cluster_wilson(theta, w, outcomes.num, outcomes.den), method)


def _cluster_wilson(theta: float, w: np.ndarray, num: np.ndarray, den: np.ndarray) -> tuple[float, float] | None:
    """Wilson's interval of a ratio of clustered counts on Korn & Graubard's effective size."""
    clusters = len(w)
    resid = w * (num - theta * den)  # each cluster's linearised contribution (they sum to 0)
    var = clusters / (clusters - 1) * float(np.dot(resid, resid))
    units = 1.0 / float(np.dot(w * w, den))  # every unit independent: the most it can be worth
    if 0.0 < theta < 1.0 and var > 0:
        n_eff = min(units, theta * (1 - theta) / var * (Z / t_quantile(clusters - 1)) ** 2)
    else:
        # At 0 or 1 (or every cluster exactly at the mean) the variance says nothing: each
        # cluster counted once, as if its units always agreed (the most they can be correlated).
        n_eff = 1.0 / float(np.dot(w * den, w * den))
    return wilson(theta * n_eff, n_eff)


def average_interval(points: Sequence[float], intervals: Sequence[Interval]) -> Interval:
    """95 % interval of the mean of independent task metrics (the Average column), by MOVER:
    each task's distances to its own limits, added in quadrature."""
    missing = [i for i in intervals if i.bounds is None]
    if not intervals or missing:
        return Interval(None, "mover", missing[0].note if missing else "no task")
    if len(intervals) == 1:
        return intervals[0]  # the Average of one task is that task: its own interval, by its own method
    return Interval(_mover(points, [i.bounds for i in intervals if i.bounds is not None], 0.0, 1.0), "mover")


def _mover(
    points: Sequence[float], bounds: Sequence[tuple[float, float]], floor: float, ceiling: float
) -> tuple[float, float]:
    """Zou & Donner's MOVER for the mean of independent estimates with their own intervals."""
    count = len(points)
    mean = sum(points) / count
    below = math.sqrt(sum((p - lo) ** 2 for p, (lo, _) in zip(points, bounds, strict=True))) / count
    above = math.sqrt(sum((hi - p) ** 2 for p, (_, hi) in zip(points, bounds, strict=True))) / count
    return (max(floor, mean - below), min(ceiling, mean + above))


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
    mdd: float | None  # minimum detectable difference at 80 % power, from the interval's standard error
    p_holm: float | None = None
    verdict: str = ""
    interval_method: str = "bonett-price"
    interval_note: str | None = None  # why there is no interval
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data for report.json."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        out["interval"] = None if self.interval is None else list(self.interval)
        out["flip_rate"] = (self.right_to_wrong + self.wrong_to_right) / self.n if self.n else None
        out["changed_rate"] = self.changed / self.n if self.n else None
        return {**out, **self.extra}


def _common(reference: Outcomes, quantized: Outcomes) -> list[str]:
    """The sample ids both sides answered, in the reference's order."""
    theirs = quantized.index
    return [sid for sid in reference.ids if sid in theirs]


def _positions(sides: Sequence[Outcomes], ids: Sequence[str]) -> list[np.ndarray]:
    """Each side's positions of ``ids``."""
    return [np.fromiter((side.index[s] for s in ids), dtype=np.int64, count=len(ids)) for side in sides]


def mdd_of(ci: Interval) -> float | None:
    """The smallest difference this interval's precision detects at 80 % power."""
    return None if ci.se is None else (Z + Z_POWER) * ci.se


def paired(
    reference: Outcomes,
    quantized: Outcomes,
    ref_answers: Mapping[str, Any],
    quant_answers: Mapping[str, Any],
    ref_verdicts: Mapping[str, bool],
    quant_verdicts: Mapping[str, bool],
) -> Paired:
    """Paired difference of a task's metric, its interval, flips, McNemar's p and the MDD.

    ``*_verdicts`` are each sample's right/wrong (an IFEval prompt: all strict instructions
    followed), which flips and McNemar count; ``*_answers`` the extracted answers.
    """
    common = _common(reference, quantized)
    only_ref = len(reference) - len(common)
    only_quant = len(quantized) - len(common)
    if not common:
        return Paired(0, only_ref, only_quant, None, None, None, None, 0, 0, 0, 1.0, None, interval_note="no sample")
    ir, iq = _positions([reference, quantized], common)
    v_ref = np.fromiter((bool(ref_verdicts[s]) for s in common), dtype=bool, count=len(common))
    v_quant = np.fromiter((bool(quant_verdicts[s]) for s in common), dtype=bool, count=len(common))
    r2w = int(np.sum(v_ref & ~v_quant))
    w2r = int(np.sum(v_quant & ~v_ref))
    changed = sum(1 for s in common if ref_answers.get(s) != quant_answers.get(s))
    ref_point = reference.point(ir)
    quant_point = quantized.point(iq)
    delta = None if ref_point is None or quant_point is None else quant_point - ref_point
    ci = paired_interval(reference, quantized, ir, iq)
    return Paired(
        len(common), only_ref, only_quant, ref_point, quant_point, delta, ci.bounds, r2w, w2r, changed,
        mcnemar_exact(r2w, w2r), mdd_of(ci), interval_method=ci.method, interval_note=ci.note,
    )  # fmt: skip


def paired_interval(reference: Outcomes, quantized: Outcomes, ir: np.ndarray, iq: np.ndarray) -> Interval:
    """95 % interval of quantized - reference on the paired samples at ``ir``/``iq``."""
    nr, dr, nq, dq = reference.num[ir], reference.den[ir], quantized.num[iq], quantized.den[iq]
    binary = _is_binary(nr, dr) and _is_binary(nq, dq)
    method = "bonett-price" if binary else "linearized-t"
    n = len(ir)
    if n < MIN_SAMPLES:
        return _too_few(n, method, "paired sample")
    codes = reference.codes[ir]
    wr = weights(reference.kind, codes, dr)
    if binary:
        # Bonett & Price: the discordant proportions with one pseudo-pair added each way, on
        # Kish's effective count (a macro average weights subjects, not samples).
        n_eff = 1.0 / float(np.dot(wr, wr))
        change = nq - nr
        lost = float(np.dot(wr, change < 0)) * n_eff
        gained = float(np.dot(wr, change > 0)) * n_eff
        p_lost, p_gained = (lost + 1) / (n_eff + 2), (gained + 1) / (n_eff + 2)
        centre = p_gained - p_lost
        se = math.sqrt(max(0.0, p_lost + p_gained - centre * centre) / (n_eff + 2))
        return Interval((max(-1.0, centre - Z * se), min(1.0, centre + Z * se)), method)
    wq = weights(quantized.kind, codes, dq)
    theta_r, theta_q = float(np.dot(wr, nr)), float(np.dot(wq, nq))
    resid = wq * (nq - theta_q * dq) - wr * (nr - theta_r * dr)
    clusters = 1.0 / float(np.dot(wr * dr, wr * dr))
    # The same two pseudo-pairs as Bonett-Price (one unit lost, one gained): never zero-width.
    var = n / (n - 1) * float(np.dot(resid, resid)) + 2.0 / (clusters + 2) ** 2
    half = t_quantile(n - 1) * math.sqrt(var)
    delta = theta_q - theta_r
    return Interval((max(-1.0, delta - half), min(1.0, delta + half)), method)


def paired_average(parts: Sequence[Paired]) -> Interval:
    """95 % interval of the paired difference of the Average over tasks, by MOVER from each
    task's paired interval (tasks independent)."""
    missing = [p for p in parts if p.interval is None or p.delta is None]
    if not parts or missing:
        return Interval(None, "mover", missing[0].interval_note if missing else "no task")
    bounds = [p.interval for p in parts if p.interval is not None]
    return Interval(_mover([p.delta for p in parts if p.delta is not None], bounds, -1.0, 1.0), "mover")


def verdict(
    delta: float | None, ci: tuple[float, float] | None, p_holm: float | None, n: int, mdd: float | None
) -> str:
    """What a user reads: loss, gain, no detectable change, or inconclusive (with what would show).
    No interval (too few samples) is never a loss, a gain or "no change"."""
    if delta is None or n == 0:
        return "not compared"
    if ci is None:
        return f"inconclusive — n too small: {n} paired sample{'' if n == 1 else 's'}, too few for an interval"
    significant = p_holm is not None and p_holm < ALPHA and not ci[0] <= 0.0 <= ci[1]
    if significant:
        return "loss" if delta < 0 else "gain"
    if ci[0] >= -EQUIVALENCE and ci[1] <= EQUIVALENCE:
        return "no detectable change"
    shown = f"{100 * mdd:.1f}" if mdd is not None else "?"
    return f"inconclusive — n too small: with {n} samples, only a change > {shown} points would show"


__all__ = [
    "METHODS",
    "Interval",
    "Outcomes",
    "Paired",
    "average_interval",
    "holm",
    "interval",
    "mcnemar_exact",
    "mdd_of",
    "paired",
    "paired_average",
    "paired_interval",
    "seed_for",
    "t_quantile",
    "verdict",
    "weights",
    "wilson",
]
