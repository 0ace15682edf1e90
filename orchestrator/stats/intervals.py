"""Intervals from per-sample outcomes (the package docstring says why each method)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
