"""How far a quantized checkpoint's token distributions are from its reference's, from the
servers' own top-k log-probabilities (what llama.cpp's ``llama-perplexity --kl-divergence``
measures offline, here on the prompts the accuracy run sent).

Per sample, on the positions both sides decoded from the same context (the common generated
prefix: every position up to and including the first where the greedy tokens differ):

- KL(ref ‖ quant) per position, a **top-k lower bound**: the smallest KL consistent with what
  both servers reported. Each side names its top-k tokens with their probabilities; a token
  absent from a side's list has at most that side's k-th listed probability there (it would
  have been listed otherwise). The tokens in either list are buckets of their own, the rest of
  the vocabulary one tail bucket, and the bound is the minimum of the KL over those buckets
  across every unreported value the caps allow (a convex problem, solved exactly: see
  ``position_kl``). Merging outcomes never increases a KL divergence and the true values are
  among those allowed, so the bound is never above the full-vocabulary KL; it is tight when the
  lists hold nearly all the mass, and two lists that share no token give a positive bound, never
  0 (the old shared-tokens-plus-tail estimate read exactly those samples, the ones that diverge
  most, as 0).
- llama-server reports a character made of several byte tokens as one entry with its last
  token's probabilities: such entries line up only where both sides emitted the same piece, so
  the common prefix ends before two different ones.
- Tokens are matched by id where both servers sent ids (llama-server, TGI, vLLM), else by text (then
  pieces of a multi-byte character, shown as "\ufffd", and empty texts cannot be matched and
  count in the tail); each comparison says which, how many positions had disjoint lists, and
  how much of each side's mass its top-k covered.
- Top-1 agreement ("same top p"), and Δp: the quantized side's probability of the reference's
  chosen token minus the reference's (a token absent from the quantized list counts at its cap,
  so |Δp| is a lower bound there), as llama-perplexity reports them.
- For multiple choice, the probability each side puts on the reference's answer letter, at the
  position where the reference emitted it (when that position is in the common prefix).

A task's figures are the mean, median and p99 over its paired samples, with a 95 % percentile
bootstrap interval of the mean (seeded like the other statistics; none from a single sample),
and llama-perplexity's token statistics over every compared position: KLD percentiles
99/95/90/median/10/5/1, RMS Δp and same top p. Figures are printed with significant digits: a
mean of 9e-8 nats is not "0.0000".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.records import LOGPROB_SPANS as SPANS
from orchestrator.stats import CONFIDENCE

RESAMPLES = 2000

TAIL_FLOOR = 1e-10  # a tail bucket the server reports as empty still holds some mass


def _ambiguous(token: str) -> bool:
    """A token text that may stand for several tokens: the empty or broken text of a piece of a
    multi-byte character (llama-cpp-python decodes pieces with errors ignored and keys its
    alternatives by that text, so several tokens share it and one logprob survives)."""
    return not token or "\ufffd" in token


Key = int | str  # a token id, or its text where a side has no ids


@dataclass(frozen=True)
class Top:
    """One side's report at one position: its listed tokens (key -> logprob), the most an
    unlisted token can have (its k-th listed probability; 1 when it listed nothing to bound
    with), and whether the keys are ids."""

    listed: dict[Key, float]
    cap: float
    by_id: bool


def _spans(position: Sequence[Any]) -> bool:
    """An entry that stands for several tokens (backends/logprobs.py). Records stored before the
    flag existed tell it too: the entry's text is a whole character while its own token, among
    the alternatives, is a broken piece of one."""
    if len(position) > SPANS:
        return bool(position[SPANS])
    if len(position) <= 3 or _ambiguous(str(position[0])):
        return False
    return any(len(alt) > 2 and alt[2] == position[3] and _ambiguous(str(alt[0])) for alt in position[2])


def _has_ids(position: Sequence[Any]) -> bool:
    return len(position) > 3 and all(len(alt) > 2 for alt in position[2])


def _top(position: Sequence[Any], by_id: bool) -> Top:
    """A position's alternatives (the chosen token included) by id, or by text without the
    ambiguous ones (their mass joins the tail rather than being matched to another token)."""
    alts = position[2]
    cap = math.exp(min(float(a[1]) for a in alts)) if alts else 1.0
    if by_id:
        listed: dict[Key, float] = {int(a[2]): float(a[1]) for a in alts}
        if position[1] is not None:
            listed.setdefault(int(position[3]), float(position[1]))
        return Top(listed, cap, True)
    listed = {str(t): float(lp) for t, lp, *_ in alts if not _ambiguous(str(t))}
    if position[1] is not None and not _ambiguous(str(position[0])):
        listed.setdefault(str(position[0]), float(position[1]))
    return Top(listed, cap, False)


def _sides(ref: Sequence[Any], quant: Sequence[Any]) -> tuple[Top, Top]:
    """Both sides' reports at one position, by id when both have ids."""
    by_id = _has_ids(ref) and _has_ids(quant)
    return _top(ref, by_id), _top(quant, by_id)


def _chosen(position: Sequence[Any], top: Top) -> Key | None:
    return (int(position[3]) if top.by_id else str(position[0])) if position[1] is not None else None


def position_kl(
    ref: Mapping[Key, float], quant: Mapping[Key, float], ref_cap: float = 1.0, quant_cap: float = 1.0
) -> float:
    """The smallest KL(ref ‖ quant) in nats consistent with both sides' top-k reports.

    ``ref``/``quant``: each side's listed tokens (key -> logprob); ``*_cap``: the most an
    unlisted token can have on that side (its k-th listed probability). Buckets: A, the tokens
    both listed (known on both sides); B, listed by the reference only (the quantized side's x_b
    ≤ quant_cap unknown); C, listed by the quantized side only (the reference's y_c ≤ ref_cap
    unknown); R, the rest. The minimum over x, y of
        Σ_A p log p/q + Σ_B p_b log p_b/x_b + Σ_C y_c log y_c/q_c + P_R log P_R/Q_R
    (jointly convex) has, by its KKT conditions, x_b = min(quant_cap, p_b / λ) and
    y_c = min(ref_cap, q_c λ) with λ = P_R / Q_R, or R is empty on both sides (``_unlisted_kl``).
    """
    kl = 0.0
    mass_p = mass_q = 0.0
    # In the reference's own order, not a set's: a set of strings iterates in an order that
    # changes with the hash seed, and so would the float sums' last digits (report.json must
    # render byte-identical on every re-render).
    for token, lp in ref.items():
        if token not in quant:
            continue
        lq = quant[token]
        p = math.exp(lp)
        kl += p * (lp - lq)
        mass_p += p
        mass_q += math.exp(lq)
    only_ref = [math.exp(lp) for t, lp in ref.items() if t not in quant]
    only_quant = [math.exp(lq) for t, lq in quant.items() if t not in ref]
    left_p = max(0.0, 1.0 - mass_p - sum(only_ref))  # the reference's mass on C and R
    left_q = max(0.0, 1.0 - mass_q - sum(only_quant))  # the quantized side's mass on B and R
    return max(0.0, kl + _unlisted_kl(only_ref, only_quant, left_p, left_q, ref_cap, quant_cap))


def _unlisted_kl(pb: list[float], qc: list[float], left_p: float, left_q: float, cap_p: float, cap_q: float) -> float:
    """min over the unreported values of the B, C and R terms (``position_kl``).

    Two cases of the KKT conditions: either R holds mass on both sides and x, y share one
    multiplier λ = P_R / Q_R (bisection on P_R(λ) − λ Q_R(λ)), or R is empty on both sides and
    the C tokens take all of the reference's unlisted mass at level λ_c, the B tokens all of the
    quantized side's at level μ_c; that corner is the optimum when μ_c ≥ λ_c (moving mass into R
    would change the KL by δ·log(μ_c / λ_c))."""
    lam_c = _level(qc, cap_p, left_p, rising=True)
    mu_c = _level(pb, cap_q, left_q, rising=False)
    if lam_c is not None and mu_c is not None and mu_c >= lam_c:
        x = [min(cap_q, p / mu_c) for p in pb]
        y = [min(cap_p, q * lam_c) for q in qc]
        rest_p = rest_q = 0.0
    else:

        def solution(lam: float) -> tuple[list[float], list[float], float, float]:
            # No mass left on a side: its unlisted tokens have none.
            x = [min(cap_q, p / lam) if left_q > 0 else 0.0 for p in pb]
            y = [min(cap_p, q * lam) if left_p > 0 else 0.0 for q in qc]
            return x, y, left_p - sum(y), left_q - sum(x)

        def too_small(lam: float) -> bool:
            # The quantized side's unlisted mass overdrawn, or P_R > λ Q_R.
            _, _, rest_p, rest_q = solution(lam)
            return rest_q < 0 or (rest_p >= 0 and rest_p - lam * rest_q > 0)

        x, y, rest_p, rest_q = solution(_bisect(too_small, -math.log(TAIL_FLOOR)) if pb or qc else 1.0)
    total = sum(p * math.log(p / max(TAIL_FLOOR, xb)) for p, xb in zip(pb, x, strict=True) if p > 0)
    total += sum(yc * math.log(yc / q) for yc, q in zip(y, qc, strict=True) if yc > 0 and q > 0)
    rest_p = max(0.0, rest_p)
    if rest_p > 0.0:
        total += rest_p * math.log(rest_p / max(TAIL_FLOOR, rest_q))
    return total


def _level(values: list[float], cap: float, total: float, rising: bool) -> float | None:
    """The multiplier m at which Σ min(cap, v·m) (rising) or Σ min(cap, v / m) (falling) is
    ``total``; None when even every value at its cap holds less than that."""
    if total <= 0:
        return 0.0 if rising else math.inf
    if not values or cap * len(values) < total:
        return None

    def too_small(m: float) -> bool:
        held = sum(min(cap, v * m) if rising else min(cap, v / m) for v in values)
        return (held < total) == rising

    return _bisect(too_small, -2 * math.log(TAIL_FLOOR))


def _bisect(too_small: Callable[[float], bool], span: float) -> float:
    """The m in [e^-span, e^span] where ``too_small`` turns false (it is monotone), bisected in
    log m to 2^-80 of the range."""
    lo, hi = -span, span
    for _ in range(80):
        mid = (lo + hi) / 2
        if too_small(math.exp(mid)):
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class SampleDivergence:
    """One paired sample's divergence figures."""

    first_kl: float  # at the first generated position
    prefix_kl: float  # mean over the common generated prefix
    positions: int  # positions in the common prefix
    top1_agree: int  # of those, where both sides' top token is the same
    first_top1: bool
    ref_answer_p: float | None = None  # P(reference's answer letter), each side, where comparable
    quant_answer_p: float | None = None
    kls: tuple[float, ...] = ()  # each compared position's KL bound
    dps: tuple[float, ...] = ()  # each position's Δp (quantized − reference, the reference's token)
    disjoint: int = 0  # positions whose top-k lists shared no token
    by_id: int = 0  # positions matched by token id (the others by text)
    mass_ref: float = 0.0  # the probability mass each side's top-k listed, summed over positions
    mass_quant: float = 0.0


def sample_divergence(
    ref: Sequence[Sequence[Any]], quant: Sequence[Sequence[Any]], answer: str | None = None
) -> SampleDivergence | None:
    """Divergence of one sample's quantized logprobs from the reference's (None: nothing to compare)."""
    n = min(len(ref), len(quant))
    if n == 0:
        return None
    kls: list[float] = []
    dps: list[float] = []
    agree = disjoint = by_id = 0
    mass_ref = mass_quant = 0.0
    answer_at: int | None = None
    first: tuple[Top, Top] | None = None
    for i in range(n):
        top_r, top_q = _sides(ref[i], quant[i])
        if not top_r.listed or not top_q.listed:
            break
        same = ref[i][0] == quant[i][0] and _chosen(ref[i], top_r) == _chosen(quant[i], top_q)
        if not same and (_spans(ref[i]) or _spans(quant[i])):
            # An entry for several tokens holds its last token's probabilities: where the sides
            # emitted different pieces, the two entries are not at the same position.
            break
        first = first or (top_r, top_q)
        kls.append(position_kl(top_r.listed, top_q.listed, top_r.cap, top_q.cap))
        agree += _best(top_r) == _best(top_q)
        disjoint += not (top_r.listed.keys() & top_q.listed.keys())
        by_id += top_r.by_id
        mass_ref += sum(math.exp(v) for v in top_r.listed.values())
        mass_quant += sum(math.exp(v) for v in top_q.listed.values())
        token = _chosen(ref[i], top_r)
        if token is not None and token in top_r.listed:
            lq = top_q.listed.get(token)
            dps.append((math.exp(lq) if lq is not None else min(top_q.cap, 1.0)) - math.exp(top_r.listed[token]))
        if answer is not None and answer_at is None and str(ref[i][0]).strip() == answer:
            answer_at = i
        if not same:
            break  # the contexts differ from here on
    if not kls or first is None:
        return None
    ref_p = quant_p = None
    if answer_at is not None:
        top_r, top_q = _sides(ref[answer_at], quant[answer_at])
        token = _chosen(ref[answer_at], top_r)
        if token is not None and token in top_r.listed:
            ref_p = math.exp(top_r.listed[token])
            lq = top_q.listed.get(token)
            quant_p = math.exp(lq) if lq is not None else 0.0  # outside its top-k: next to nothing
    return SampleDivergence(
        first_kl=kls[0],
        prefix_kl=sum(kls) / len(kls),
        positions=len(kls),
        top1_agree=agree,
        first_top1=_best(first[0]) == _best(first[1]),
        ref_answer_p=ref_p,
        quant_answer_p=quant_p,
        kls=tuple(kls),
        dps=tuple(dps),
        disjoint=disjoint,
        by_id=by_id,
        mass_ref=mass_ref,
        mass_quant=mass_quant,
    )


def _best(top: Top) -> Key:
    return max(top.listed, key=top.listed.__getitem__)


def _spread(values: Sequence[float], rng: np.random.Generator, b: int) -> dict[str, Any]:
    """Mean, median, p99 and the bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    out: dict[str, Any] = {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "p99": float(np.percentile(x, 99)),
        "interval": None,
        "interval_method": "bootstrap",
    }
    if len(x) < 2:
        return out  # one sample says nothing of its spread: no interval
    # Resampled in chunks: b x n indices at once would be hundreds of MB for a full MMLU.
    means = []
    chunk = max(1, 2_000_000 // max(1, len(x)))
    for start in range(0, b, chunk):
        idx = rng.integers(0, len(x), size=(min(chunk, b - start), len(x)))
        means.append(x[idx].mean(axis=1))
    boot = np.concatenate(means)
    lo, hi = np.percentile(boot, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    out["interval"] = [float(lo), float(hi)]
    return out


def sig(value: float | None, digits: int = 3) -> str:
    """A divergence figure with significant digits (they span many orders of magnitude)."""
    if value is None:
        return ""
    return "0" if value == 0 else f"{value:.{digits}g}"


def with_interval(spread: Mapping[str, Any]) -> str:
    """Mean [low, high], or the mean alone when there is no interval."""
    ci = spread.get("interval")
    return sig(spread["mean"]) + ("" if not ci else f" [{sig(ci[0])}, {sig(ci[1])}]")


def summarize(
    per_sample: Mapping[Any, SampleDivergence], k: int, seed: int, b: int = RESAMPLES
) -> dict[str, Any] | None:
    """A task's (or a whole comparison's) divergence figures, for report.json; None when no sample pairs."""
    if not per_sample:
        return None
    rng = np.random.default_rng(seed)
    rows = list(per_sample.values())
    positions = sum(r.positions for r in rows)
    answers = [(r.ref_answer_p, r.quant_answer_p) for r in rows if r.ref_answer_p is not None]
    by_id = sum(r.by_id for r in rows)
    return {
        "n": len(rows),
        "k": k,
        "estimate": f"top-{k} lower bound (each side's top-{k}, its k-th probability capping any token it did not "
        "list; the smallest KL consistent with both)",
        "matched_by": "id"
        if by_id == positions
        else "text"
        if by_id == 0
        else "id where both sides sent ids, else text",
        "kl_prefix": _spread([r.prefix_kl for r in rows], rng, b),
        "kl_first": _spread([r.first_kl for r in rows], rng, b),
        # The per-sample KL's quantiles (0 %, 1 %, ..., 100 %): the sorted curve the page plots.
        "quantiles": [float(v) for v in np.quantile([r.prefix_kl for r in rows], np.linspace(0, 1, 101))],
        "top1_agreement": sum(r.top1_agree for r in rows) / positions if positions else None,
        "first_top1_agreement": sum(r.first_top1 for r in rows) / len(rows),
        "positions": positions,
        "disjoint_positions": sum(r.disjoint for r in rows),
        "mass_covered": {
            "reference": sum(r.mass_ref for r in rows) / positions if positions else None,
            "quantized": sum(r.mass_quant for r in rows) / positions if positions else None,
        },
        "tokens": _token_statistics(rows),
        "answer_probability": (
            {
                "n": len(answers),
                "reference": sum(a for a, _ in answers) / len(answers),
                "quantized": sum(q or 0.0 for _, q in answers) / len(answers),
            }
            if answers
            else None
        ),
    }


# llama-perplexity --kl-divergence's percentiles of the per-token KL.
KLD_PERCENTILES = (99, 95, 90, 50, 10, 5, 1)


def _token_statistics(rows: Sequence[SampleDivergence]) -> dict[str, Any] | None:
    """Over every compared position (llama-perplexity's "KL divergence statistics" and "token
    probability statistics"): KLD mean and percentiles, RMS Δp, same top p."""
    kls = np.fromiter((v for r in rows for v in r.kls), dtype=float)
    dps = np.fromiter((v for r in rows for v in r.dps), dtype=float)
    if not len(kls):
        return None
    positions = sum(r.positions for r in rows)
    return {
        "positions": len(kls),
        "kld_mean": float(kls.mean()),
        "kld_percentiles": {
            str(q): float(v) for q, v in zip(KLD_PERCENTILES, np.percentile(kls, KLD_PERCENTILES), strict=True)
        },
        "kld_max": float(kls.max()),
        "mean_dp": float(dps.mean()) if len(dps) else None,
        "rms_dp": float(np.sqrt(np.mean(dps * dps))) if len(dps) else None,
        "same_top_p": sum(r.top1_agree for r in rows) / positions if positions else None,
    }


def divergences(
    ref: Mapping[str, Sequence[Sequence[Any]]],
    quant: Mapping[str, Sequence[Sequence[Any]]],
    answers: Mapping[str, Any] | None = None,
) -> dict[str, SampleDivergence]:
    """Per sample both sides answered with logprobs: its divergence (``answers``: the reference's
    extracted answer letters, for multiple choice)."""
    out: dict[str, SampleDivergence] = {}
    for sid, positions in ref.items():
        other = quant.get(sid)
        if other is None:
            continue
        letter = (answers or {}).get(sid)
        found = sample_divergence(positions, other, letter if isinstance(letter, str) and len(letter) == 1 else None)
        if found is not None:
            out[sid] = found
    return out


def k_of(logprobs: Mapping[str, Sequence[Sequence[Any]]]) -> int:
    """The k a side really got: the most alternatives any stored position carried."""
    return max((len(p[2]) for positions in logprobs.values() for p in positions), default=0)


__all__ = [
    "SampleDivergence",
    "divergences",
    "k_of",
    "position_kl",
    "sample_divergence",
    "sig",
    "summarize",
    "with_interval",
]
