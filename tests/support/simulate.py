"""Records of known truth for checking the report's intervals by simulation.

Each generator draws one data set from known probabilities and returns the outcomes the report
would build from its records, the true value the interval should hold, and the oracle standard
error (the estimator's true spread under this design), which a width is measured against.
Subjects get accuracies spread around a level, as benchmark subjects are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from orchestrator.stats import Outcomes


@dataclass(frozen=True)
class Drawn:
    """One simulated side (or pair of sides) and what its interval should hold."""

    sides: tuple[Outcomes, ...]
    truth: float
    oracle_se: float


def outcomes(kind: str, strata: np.ndarray, num: np.ndarray, den: np.ndarray | None = None) -> Outcomes:
    """Per-sample outcomes as a task builds them (ids in order, subject names as strata)."""
    n = len(num)
    return Outcomes(
        kind,
        [f"q{i}" for i in range(n)],
        [f"s{s}" for s in strata],
        np.asarray(num, dtype=float),
        np.ones(n) if den is None else np.asarray(den, dtype=float),
    )


def subject_accuracies(rng: np.random.Generator, subjects: int, level: float) -> np.ndarray:
    """Accuracies around ``level``: ±0.04 near 0 or 1, ±0.25 in the middle."""
    spread = 0.25 if 0.2 < level < 0.8 else 0.04
    return np.clip(level + rng.uniform(-spread, spread, subjects), 0.01, 0.99)


def accuracy(rng: np.random.Generator, kind: str, sizes: np.ndarray, level: float) -> Drawn:
    """Right/wrong per sample, subject s right with probability p_s."""
    p = subject_accuracies(rng, len(sizes), level)
    strata = np.repeat(np.arange(len(sizes)), sizes)
    right = (rng.random(len(strata)) < p[strata]).astype(float)
    if kind == "macro":
        truth, var = float(p.mean()), float(np.sum(p * (1 - p) / sizes)) / len(sizes) ** 2
    else:
        truth = float(np.dot(sizes, p) / sizes.sum())
        var = float(np.dot(sizes, p * (1 - p))) / float(sizes.sum()) ** 2
    return Drawn((outcomes(kind, strata, right),), truth, math.sqrt(var))


def instructions(rng: np.random.Generator, prompts: int, level: float, icc: float = 0.3) -> Drawn:
    """IFEval's instruction level: 1-3 instructions per prompt, followed with a probability
    drawn per prompt (Beta around ``level``, intra-prompt correlation ``icc``)."""
    given = rng.integers(1, 4, prompts)
    a, b = level * (1 - icc) / icc, (1 - level) * (1 - icc) / icc
    p = rng.beta(a, b, prompts)
    followed = rng.binomial(given, p)
    # The ratio estimator's spread: Var(Σ(num - level·den)) / (Σden)², by the prompt effect's law.
    mean_given, var_p = 2.0, level * (1 - level) * icc
    per_prompt = mean_given * level * (1 - level) * (1 - icc) + (14 / 3) * var_p  # E[k p(1-p)] + E[k²] Var(p)
    se = math.sqrt(per_prompt / prompts) / mean_given
    return Drawn((outcomes("micro", np.zeros(prompts, dtype=int), followed, given),), level, se)


def paired(
    rng: np.random.Generator, kind: str, sizes: np.ndarray, level: float, discordance: float, delta: float
) -> Drawn:
    """A reference and a quantized side on the same samples: per subject, right→wrong with
    probability (discordance − delta)/2 and wrong→right with (discordance + delta)/2."""
    p = subject_accuracies(rng, len(sizes), level)
    lost = np.minimum((discordance - delta) / 2, p)
    gained = np.minimum((discordance + delta) / 2, 1 - p)
    strata = np.repeat(np.arange(len(sizes)), sizes)
    u = rng.random(len(strata))
    r2w = u < lost[strata]
    w2r = (u >= lost[strata]) & (u < (lost + gained)[strata])
    concordant = 1 - lost - gained
    both_right = ~(r2w | w2r) & (rng.random(len(strata)) < ((p - lost) / np.maximum(concordant, 1e-12))[strata])
    ref, quant = (r2w | both_right).astype(float), (w2r | both_right).astype(float)
    d = gained - lost
    per = lost + gained - d * d
    if kind == "macro":
        truth, var = float(d.mean()), float(np.sum(per / sizes)) / len(sizes) ** 2
    else:
        truth, var = float(np.dot(sizes, d) / sizes.sum()), float(np.dot(sizes, per)) / float(sizes.sum()) ** 2
    return Drawn((outcomes(kind, strata, ref), outcomes(kind, strata, quant)), truth, math.sqrt(var))


def verdicts(side: Outcomes) -> dict[str, bool]:
    """Each sample's right/wrong, as the records say it."""
    return {sid: bool(v) for sid, v in zip(side.ids, side.num, strict=True)}
