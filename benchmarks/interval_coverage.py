"""Interval coverage: how often each kind of interval the report prints holds the known truth.

Data sets are drawn from known per-subject probabilities (tests/support/simulate.py: the same
generators as tests/test_coverage.py, which asserts the bands) at the sizes a user meets, and the
report's own functions make the intervals. Printed per regime: coverage (nominal 95 %), median
width, and width against the oracle interval (2 z times the estimator's true standard error).

Usage: python benchmarks/interval_coverage.py [--replicates 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator import stats  # noqa: E402
from tests.support import simulate as sim  # noqa: E402


def _paired(d: sim.Drawn) -> tuple[float, float] | None:
    ref, quant = d.sides
    return stats.paired(ref, quant, {}, {}, sim.verdicts(ref), sim.verdicts(quant)).interval


def _one(d: sim.Drawn) -> tuple[float, float] | None:
    return stats.interval(d.sides[0]).bounds


Regime = tuple[str, Callable[[np.random.Generator], sim.Drawn], Callable[[sim.Drawn], tuple[float, float] | None]]

REGIMES: list[Regime] = [
    ("C-Eval accuracy, macro, 1 per subject (52)", lambda r: sim.accuracy(r, "macro", np.full(52, 1), 0.5), _one),
    ("C-Eval accuracy, macro, 2 per subject (104)", lambda r: sim.accuracy(r, "macro", np.full(52, 2), 0.5), _one),
    ("MMLU accuracy, micro, 2 per subject (114)", lambda r: sim.accuracy(r, "micro", np.full(57, 2), 0.5), _one),
    ("MMLU accuracy, micro, 1 per subject, p≈0.05", lambda r: sim.accuracy(r, "micro", np.full(57, 1), 0.05), _one),
    ("accuracy, one subject of 3, p≈0.95", lambda r: sim.accuracy(r, "micro", np.array([3]), 0.95), _one),
    ("IFEval instruction level, 10 prompts", lambda r: sim.instructions(r, 10, 0.4), _one),
    ("IFEval instruction level, 541 prompts", lambda r: sim.instructions(r, 541, 0.4), _one),
    (
        "C-Eval paired Δ, macro, 1 per subject, 16 % flips",
        lambda r: sim.paired(r, "macro", np.full(52, 1), 0.5, 0.16, -0.03),
        _paired,
    ),
    (
        "MMLU paired Δ, micro, 2 per subject, 16 % flips",
        lambda r: sim.paired(r, "micro", np.full(57, 2), 0.5, 0.16, -0.03),
        _paired,
    ),
    (
        "noise floor: paired Δ, 1,000 samples, 2 % flips, no change",
        lambda r: sim.paired(r, "micro", np.full(50, 20), 0.5, 0.02, 0.0),
        _paired,
    ),
    (
        "paired Δ, full MMLU (14,042), 10 % flips",
        lambda r: sim.paired(r, "micro", np.full(57, 246), 0.6, 0.1, -0.01),
        _paired,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'regime':62} coverage  median width  width/oracle")
    for name, draw, make in REGIMES:
        rng = np.random.default_rng(args.seed)
        hits, widths, oracle, none = 0, [], [], 0
        for _ in range(args.replicates):
            drawn = draw(rng)
            ci = make(drawn)
            if ci is None:
                none += 1
                continue
            hits += ci[0] <= drawn.truth <= ci[1]
            widths.append(ci[1] - ci[0])
            oracle.append(2 * stats.Z * drawn.oracle_se)
        done = args.replicates - none
        ratio = float(np.median(widths) / np.median(oracle))
        print(f"{name:62} {100 * hits / done:6.1f} %  {100 * float(np.median(widths)):8.1f} pts  {ratio:8.2f}x")


if __name__ == "__main__":
    main()
