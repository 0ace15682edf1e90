"""orchestrator.stats against independent implementations (its coverage: tests/test_coverage.py)."""

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


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (50, 100), (137, 200), (196, 200), (14042, 14042)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    ours = stats.wilson(k, n)
    assert ours is not None and ours == pytest.approx((lo, hi), abs=1e-4)  # statsmodels uses z = 1.95996...


@pytest.mark.parametrize(("k", "n"), [(1, 10), (2, 40), (3, 80), (9, 10), (78, 80), (1, 2)])
def test_wilson_near_the_edges_takes_the_exact_poisson_limit(k: int, n: int) -> None:
    """Brown, Cai & DasGupta's modified Wilson: a few successes (or failures) take the exact
    Poisson limit on that side, which lies below Wilson's own (its coverage dips there)."""
    from scipy.stats import chi2

    wilson = proportion_confint(k, n, alpha=0.05, method="wilson")
    ours = stats.wilson(k, n)
    assert ours is not None
    edge = 2 if n <= 50 else 3
    exact = [chi2.ppf(0.025, 2 * x) / 2 / n for x in (k, n - k)]
    if k <= edge:
        assert ours[0] == pytest.approx(exact[0], rel=1e-9) and ours[0] < wilson[0]
    else:
        assert ours[0] == pytest.approx(wilson[0], abs=1e-4)
    if n - k <= edge:
        assert 1 - ours[1] == pytest.approx(exact[1], rel=1e-9) and ours[1] > wilson[1]
    else:
        assert ours[1] == pytest.approx(wilson[1], abs=1e-4)


def test_macro_accuracy_uses_kish_effective_size() -> None:
    """Unequal subjects: Wilson on 1 / Σw² samples (w the macro weights), not on the count."""
    sizes = [1, 4, 10]
    values = {f"{s}/{i}": (f"s{s}", float(i % 2), 1.0) for s, n in enumerate(sizes) for i in range(n)}
    macro = Outcomes.from_values("macro", values)
    w = np.concatenate([np.full(n, 1 / (3 * n)) for n in sizes])
    n_eff = 1 / float(np.sum(w * w))
    theta = macro.point()
    assert theta is not None and float(np.dot(w, macro.num)) == pytest.approx(theta)
    ci = stats.interval(macro)
    assert ci.method == "wilson-kish" and ci.bounds == pytest.approx(stats.wilson(theta * n_eff, n_eff))
    assert n_eff < len(values)


@pytest.mark.slow
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


def test_paired_counts_flips_and_unpaired_samples() -> None:
    ref = Outcomes.from_values("micro", {str(i): ("s", float(i % 2 == 0), 1.0) for i in range(10)})
    quant = Outcomes.from_values("micro", {str(i): ("s", float(i < 5), 1.0) for i in range(2, 12)})
    verdict_r = {k: bool(v[1]) for k, v in ref.values.items()}
    verdict_q = {k: bool(v[1]) for k, v in quant.values.items()}
    answers_r = {k: "A" if v[1] else "B" for k, v in ref.values.items()}
    answers_q = {k: "A" if v[1] else "C" for k, v in quant.values.items()}
    p = stats.paired(ref, quant, answers_r, answers_q, verdict_r, verdict_q)
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
    one = stats.paired(ref, quant, {}, {}, _v(ref), _v(quant))
    two = stats.paired(ref, quant, {}, {}, _v(ref), _v(quant))
    assert one == two and one.interval is not None
    assert stats.interval(ref) == stats.interval(ref)


def test_paired_interval_is_bonett_price_on_a_micro_average() -> None:
    """Bonett & Price (2012), their formula by hand: one discordant pair added each way."""
    ref = Outcomes.from_values("micro", {str(i): ("s", float(i < 60), 1.0) for i in range(100)})
    quant = Outcomes.from_values("micro", {str(i): ("s", float(8 <= i < 63), 1.0) for i in range(100)})
    p = stats.paired(ref, quant, {}, {}, _v(ref), _v(quant))
    b, c, n = 8, 3, 100  # right->wrong 0..7, wrong->right 60..62
    p12, p21 = (b + 1) / (n + 2), (c + 1) / (n + 2)
    se = math.sqrt((p12 + p21 - (p21 - p12) ** 2) / (n + 2))
    assert (p.right_to_wrong, p.wrong_to_right) == (b, c) and p.interval_method == "bonett-price"
    assert p.interval == pytest.approx((p21 - p12 - stats.Z * se, p21 - p12 + stats.Z * se))
    assert p.mdd == pytest.approx((stats.Z + stats.Z_POWER) * se)


def _v(o: Outcomes) -> dict[str, bool]:
    return {k: bool(v[1]) for k, v in o.values.items()}


def test_clustered_instruction_level_interval_is_wider_than_pretending_independence() -> None:
    # 100 prompts of 4 instructions each, all followed or none: the instruction level is really
    # 100 observations, not 400. The clustered variance keeps that; Wilson on 400 would not.
    values = {str(i): ("g", 4.0 if i % 2 else 0.0, 4.0) for i in range(100)}
    ci = stats.interval(Outcomes.from_values("micro", values))
    assert ci.bounds is not None and ci.method == "wilson-cluster"
    naive = stats.wilson(200, 400)
    clustered = stats.wilson(50, 100)
    assert naive is not None and clustered is not None
    assert (ci.bounds[1] - ci.bounds[0]) > 1.5 * (naive[1] - naive[0])
    assert ci.bounds[1] - ci.bounds[0] == pytest.approx(clustered[1] - clustered[0], rel=0.03)


def test_average_interval_is_mover_of_the_tasks() -> None:
    """Zou & Donner's MOVER; one task: its own interval."""
    a, b = stats.Interval((0.5, 0.7), "wilson"), stats.Interval((0.2, 0.45), "wilson-kish")
    ci = stats.average_interval([0.6, 0.3], [a, b])
    assert ci.method == "mover" and ci.bounds == pytest.approx(
        (0.45 - math.hypot(0.1, 0.1) / 2, 0.45 + math.hypot(0.1, 0.15) / 2)
    )
    assert stats.average_interval([0.6], [a]).bounds == pytest.approx((0.5, 0.7))


def test_verdicts_in_words() -> None:
    assert stats.verdict(-0.05, (-0.08, -0.02), 0.001, 500, 0.02) == "loss"
    assert stats.verdict(0.05, (0.02, 0.08), 0.001, 500, 0.02) == "gain"
    assert stats.verdict(0.0, (-0.004, 0.006), 0.9, 5000, 0.005) == "no detectable change"
    text = stats.verdict(-0.02, (-0.06, 0.02), 0.4, 200, 0.065)
    assert text.startswith("inconclusive") and "with 200 samples, only a change > 6.5 points would show" in text
    # Significant before correction but not after: not a loss.
    assert stats.verdict(-0.03, (-0.05, -0.01), 0.2, 500, 0.02).startswith("inconclusive")


def test_mdd_shrinks_with_n() -> None:
    small = stats.paired(*_pair(200))
    large = stats.paired(*_pair(5000))
    assert small.mdd is not None and large.mdd is not None
    assert large.mdd < small.mdd / 3 and math.isfinite(small.mdd)


def _pair(n: int) -> tuple[Outcomes, Outcomes, dict[str, str], dict[str, str], dict[str, bool], dict[str, bool]]:
    ref, quant = _paired_data(np.random.default_rng(n), n, 0.6, 0.0, 4)
    return ref, quant, {}, {}, _v(ref), _v(quant)
