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

from orchestrator.stats.intervals import (
    ALPHA,
    CONFIDENCE,
    EQUIVALENCE,
    METHODS,
    MIN_SAMPLES,
    Z_POWER,
    Interval,
    Outcomes,
    Z,
    average_interval,
    holm,
    interval,
    mcnemar_exact,
    seed_for,
    t_quantile,
    weights,
    wilson,
)
from orchestrator.stats.paired import Paired, mdd_of, paired, paired_average, paired_interval, verdict

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "EQUIVALENCE",
    "METHODS",
    "MIN_SAMPLES",
    "Z_POWER",
    "Interval",
    "Outcomes",
    "Paired",
    "Z",
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
