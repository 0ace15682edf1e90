"""Paired comparisons and verdicts: a quantized side against its reference on the samples both
answered (the package docstring says why each method)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.stats.intervals import (
    ALPHA,
    EQUIVALENCE,
    MIN_SAMPLES,
    Z_POWER,
    Interval,
    Outcomes,
    Z,
    _is_binary,
    _mover,
    _too_few,
    mcnemar_exact,
    t_quantile,
    weights,
)


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
