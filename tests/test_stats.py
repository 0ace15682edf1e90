"""orchestrator.stats against independent implementations, and its intervals by simulation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from orchestrator import stats
from orchestrator.stats import Outcomes


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (3, 9), (10, 10), (17, 4), (120, 151), (1500, 1620)])
def test_mcnemar_exact_matches_scipy_and_statsmodels(b: int, c: int) -> None:
    ours = stats.mcnemar_exact(b, c)
    if b + c:
        assert ours == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    table = [[5, b], [c, 7]]
    assert ours == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (50, 100), (137, 200), (199, 200), (14042, 14042)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    ours = stats.wilson(k, n)
    assert ours is not None and ours == pytest.approx((lo, hi), abs=1e-4)  # statsmodels uses z = 1.95996...


def test_holm_matches_statsmodels() -> None:
    rng = random.Random(3)
    for _ in range(50):
        p = [rng.random() ** 3 for _ in range(rng.randint(1, 30))]
        expected = multipletests(p, alpha=0.05, method="holm")[1]
        assert stats.holm(p) == pytest.approx(list(expected), abs=1e-12)


def _paired_data(rng: np.random.Generator, n: int, p_ref: float, delta: float, subjects: int) -> tuple[Outcomes, ...]:
    """Paired right/wrong per sample: the quantized side flips some answers so that its expected
    accuracy is p_ref + delta; subjects have different difficulties (the strata)."""
    s = np.arange(n) % subjects
    p = np.clip(p_ref + 0.2 * (s / max(1, subjects - 1) - 0.5), 0.05, 0.95)
    r = rng.random(n) < p
    u = rng.random(n)
    # Discordance of ~16 %: flips in both directions, net delta in every subject.
    q = np.where(r, u >= 0.08 - min(0.0, delta) / p, u < (0.08 * p + max(0.0, delta)) / (1 - p))
    ref = {str(i): (f"s{s[i]}", float(r[i]), 1.0) for i in range(n)}
    quant = {str(i): (f"s{s[i]}", float(q[i]), 1.0) for i in range(n)}
    return Outcomes.from_values("micro", ref), Outcomes.from_values("micro", quant)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    """2,000 simulated paired data sets with a known difference: the paired bootstrap's 95 %
    interval holds the true difference 93-97 % of the time (micro and macro)."""
    rng = np.random.default_rng(12)
    trials, n, delta = 2000, 300, -0.03
    covered = {"micro": 0, "macro": 0}
    for t in range(trials):
        ref, quant = _paired_data(rng, n, 0.6, delta, 6)
        # The true difference of this simulation's expected accuracies, per metric.
        for kind in ("micro", "macro"):
            r, q = Outcomes.from_values(kind, ref.values), Outcomes.from_values(kind, quant.values)
            reps = stats._replicates(kind, list(r.values), [r, q], np.random.default_rng(t), 400)
            lo, hi = np.percentile(reps[:, 1] - reps[:, 0], [2.5, 97.5])
            covered[kind] += lo <= delta <= hi
    for kind, hits in covered.items():
        assert 0.93 <= hits / trials <= 0.97, (kind, hits / trials)


def test_paired_counts_flips_and_unpaired_samples() -> None:
    ref = Outcomes.from_values("micro", {str(i): ("s", float(i % 2 == 0), 1.0) for i in range(10)})
    quant = Outcomes.from_values("micro", {str(i): ("s", float(i < 5), 1.0) for i in range(2, 12)})
    verdict_r = {k: bool(v[1]) for k, v in ref.values.items()}
    verdict_q = {k: bool(v[1]) for k, v in quant.values.items()}
    answers_r = {k: "A" if v[1] else "B" for k, v in ref.values.items()}
    answers_q = {k: "A" if v[1] else "C" for k, v in quant.values.items()}
    p = stats.paired(ref, quant, answers_r, answers_q, verdict_r, verdict_q, seed=1)
    # Common ids 2..9: ref right on 2,4,6,8; quant right on 2,3,4.
    assert (p.n, p.only_reference, p.only_quantized) == (8, 2, 2)
    assert (p.right_to_wrong, p.wrong_to_right) == (2, 1)  # 6, 8 lost; 3 gained
    assert p.changed == 8 - 2  # 2 and 4 still "A"; every wrong answer differs (B vs C) or flipped
    assert p.delta == pytest.approx(3 / 8 - 4 / 8)
    assert p.p_value == pytest.approx(binomtest(1, 3, 0.5).pvalue)


def test_same_inputs_same_intervals() -> None:
    rng = np.random.default_rng(5)
    ref, quant = _paired_data(rng, 500, 0.5, -0.02, 10)
    ref = Outcomes.from_values("macro", ref.values)
    quant = Outcomes.from_values("macro", quant.values)
    one = stats.paired(ref, quant, {}, {}, _v(ref), _v(quant), seed=stats.seed_for("a", "b"))
    two = stats.paired(ref, quant, {}, {}, _v(ref), _v(quant), seed=stats.seed_for("a", "b"))
    assert one == two and one.interval is not None
    assert stats.interval(ref, 9) == stats.interval(ref, 9)


def _v(o: Outcomes) -> dict[str, bool]:
    return {k: bool(v[1]) for k, v in o.values.items()}


def test_clustered_instruction_level_interval_is_wider_than_pretending_independence() -> None:
    # 100 prompts of 4 instructions each, all followed or none: the instruction level is really
    # 100 observations, not 400. Resampling prompts keeps that; Wilson on 400 would not.
    values = {str(i): ("g", 4.0 if i % 2 else 0.0, 4.0) for i in range(100)}
    ci = stats.interval(Outcomes.from_values("micro", values), seed=3)
    assert ci is not None
    naive = stats.wilson(200, 400)
    assert naive is not None and (ci[1] - ci[0]) > 1.5 * (naive[1] - naive[0])


def test_verdicts_in_words() -> None:
    assert stats.verdict(-0.05, (-0.08, -0.02), 0.001, 500, 0.02) == "loss"
    assert stats.verdict(0.05, (0.02, 0.08), 0.001, 500, 0.02) == "gain"
    assert stats.verdict(0.0, (-0.004, 0.006), 0.9, 5000, 0.005) == "no detectable change"
    text = stats.verdict(-0.02, (-0.06, 0.02), 0.4, 200, 0.065)
    assert text.startswith("inconclusive") and "with 200 samples, only a change > 6.5 points would show" in text
    # Significant before correction but not after: not a loss.
    assert stats.verdict(-0.03, (-0.05, -0.01), 0.2, 500, 0.02).startswith("inconclusive")


def test_mdd_shrinks_with_n() -> None:
    small = stats.paired(*_pair(200), seed=1)
    large = stats.paired(*_pair(5000), seed=1)
    assert small.mdd is not None and large.mdd is not None
    assert large.mdd < small.mdd / 3 and math.isfinite(small.mdd)


def _pair(n: int) -> tuple[Outcomes, Outcomes, dict[str, str], dict[str, str], dict[str, bool], dict[str, bool]]:
    ref, quant = _paired_data(np.random.default_rng(n), n, 0.6, 0.0, 4)
    return ref, quant, {}, {}, _v(ref), _v(quant)


@pytest.mark.parametrize(("n", "p"), [(1, 0.5), (7, 0.01), (250, 0.6), (1534, 0.97), (40, 1.0), (30, 0.0), (0, 0.3)])
def test_inverse_cdf_binomial_has_the_binomial_distribution(n: int, p: float) -> None:
    from scipy.stats import binom, chisquare

    draws = stats._binomial(np.random.default_rng(n), np.array([n, n]), np.array([p, p]), 20000)
    assert draws.shape == (20000, 2) and draws.min() >= 0 and draws.max() <= n
    if p in (0.0, 1.0) or n == 0:
        assert (draws == round(n * p)).all()
        return
    # Goodness of fit over the bins holding 99.9 % of the mass (tails pooled).
    lo, hi = (int(x) for x in binom.ppf([0.0005, 0.9995], n, p))
    edges = np.arange(lo, hi + 2)
    observed = np.histogram(np.clip(draws[:, 0], lo, hi), bins=edges)[0]
    expected = binom.pmf(np.arange(lo, hi + 1), n, p)
    expected[0], expected[-1] = binom.cdf(lo, n, p), binom.sf(hi - 1, n, p)
    assert chisquare(observed, expected / expected.sum() * len(draws)).pvalue > 1e-4
    assert draws[:, 0].mean() == pytest.approx(n * p, abs=4 * math.sqrt(n * p * (1 - p) / len(draws)) + 1e-9)


def test_three_outcome_counts_match_the_multinomial() -> None:
    rng = np.random.default_rng(4)
    sizes = np.array([200, 31, 5])
    probs = np.array([[0.05, 0.9, 0.05], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    counts = stats._counts(rng, sizes, probs, 20000)
    assert (counts.sum(axis=-1) == sizes).all()
    mean, cov = counts.mean(axis=0), np.stack([np.cov(counts[:, s].T) for s in range(3)])
    assert mean == pytest.approx(sizes[:, None] * probs, abs=0.15)
    expected_cov = [n * (np.diag(p) - np.outer(p, p)) for n, p in zip(sizes, probs, strict=True)]
    assert cov == pytest.approx(np.stack(expected_cov), abs=0.4)
