"""How far a quantized checkpoint's token distributions are from its reference's, from the
servers' own top-k log-probabilities (what llama.cpp's ``llama-perplexity --kl-divergence``
measures offline, here on the prompts the accuracy run sent).

Per sample, on the positions both sides decoded from the same context (the common generated
prefix: every position up to and including the first where the greedy tokens differ):

- KL(ref ‖ quant) per position, a **top-k estimate**: the tokens in both top-k lists are buckets
  of their own and all the rest of each side's mass is one tail bucket. Merging outcomes never
  increases a KL divergence, so the estimate is a lower bound of the full-vocabulary KL, tight
  when the top-k lists hold nearly all the mass (as for confident answers).
- Top-1 agreement: whether both sides' most likely token is the same.
- For multiple choice, the probability each side puts on the reference's answer letter, at the
  position where the reference emitted it (when that position is in the common prefix).

A task's figures are the mean, median and p99 over its paired samples, with a 95 % percentile
bootstrap interval of the mean (seeded like the other statistics; none from a single sample).
Figures are printed with significant digits: a mean of 9e-8 nats is not "0.0000".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.stats import CONFIDENCE

RESAMPLES = 2000

TAIL_FLOOR = 1e-10  # a tail bucket the server reports as empty still holds some mass


def _ambiguous(token: str) -> bool:
    """A token text that may stand for several tokens: the empty or broken text of a piece of a
    multi-byte character (llama-cpp-python decodes pieces with errors ignored and keys its
    alternatives by that text, so several tokens share it and one logprob survives)."""
    return not token or "\ufffd" in token


def _top(position: Sequence[Any]) -> dict[str, float]:
    """A position's alternatives as token -> logprob (the chosen token included), without the
    ambiguous ones: their mass joins the tail bucket rather than being matched to another token."""
    top = {str(t): float(lp) for t, lp in position[2] if not _ambiguous(str(t))}
    if position[1] is not None and not _ambiguous(str(position[0])):
        top.setdefault(str(position[0]), float(position[1]))
    return top


def position_kl(ref: Mapping[str, float], quant: Mapping[str, float]) -> float:
    """KL(ref ‖ quant) in nats over the shared top-k tokens plus one tail bucket per side."""
    shared = ref.keys() & quant.keys()
    kl = 0.0
    mass_p = mass_q = 0.0
    for token in shared:
        lp, lq = ref[token], quant[token]
        p = math.exp(lp)
        kl += p * (lp - lq)
        mass_p += p
        mass_q += math.exp(lq)
    tail_p = max(0.0, 1.0 - mass_p)
    tail_q = max(TAIL_FLOOR, 1.0 - mass_q)
    if tail_p > 0.0:
        kl += tail_p * math.log(tail_p / tail_q)
    return max(0.0, kl)


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


def sample_divergence(
    ref: Sequence[Sequence[Any]], quant: Sequence[Sequence[Any]], answer: str | None = None
) -> SampleDivergence | None:
    """Divergence of one sample's quantized logprobs from the reference's (None: nothing to compare)."""
    n = min(len(ref), len(quant))
    if n == 0:
        return None
    kls: list[float] = []
    agree = 0
    answer_at: int | None = None
    for i in range(n):
        top_r, top_q = _top(ref[i]), _top(quant[i])
        if not top_r or not top_q:
            break
        kls.append(position_kl(top_r, top_q))
        agree += max(top_r, key=top_r.__getitem__) == max(top_q, key=top_q.__getitem__)
        if answer is not None and answer_at is None and str(ref[i][0]).strip() == answer:
            answer_at = i
        if ref[i][0] != quant[i][0]:
            break  # the contexts differ from here on
    if not kls:
        return None
    first_r, first_q = _top(ref[0]), _top(quant[0])
    ref_p = quant_p = None
    if answer_at is not None:
        token = str(ref[answer_at][0])
        ref_p = math.exp(_top(ref[answer_at])[token])
        lq = _top(quant[answer_at]).get(token)
        quant_p = math.exp(lq) if lq is not None else 0.0  # outside its top-k: next to nothing
    return SampleDivergence(
        first_kl=kls[0],
        prefix_kl=sum(kls) / len(kls),
        positions=len(kls),
        top1_agree=agree,
        first_top1=max(first_r, key=first_r.__getitem__) == max(first_q, key=first_q.__getitem__),
        ref_answer_p=ref_p,
        quant_answer_p=quant_p,
    )


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
    return {
        "n": len(rows),
        "k": k,
        "estimate": f"top-{k} (shared top-{k} tokens plus one tail bucket: a lower bound of the full KL)",
        "kl_prefix": _spread([r.prefix_kl for r in rows], rng, b),
        "kl_first": _spread([r.first_kl for r in rows], rng, b),
        # The per-sample KL's quantiles (0 %, 1 %, ..., 100 %): the sorted curve the page plots.
        "quantiles": [float(v) for v in np.quantile([r.prefix_kl for r in rows], np.linspace(0, 1, 101))],
        "top1_agreement": sum(r.top1_agree for r in rows) / positions if positions else None,
        "first_top1_agreement": sum(r.first_top1 for r in rows) / len(rows),
        "positions": positions,
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


NOTE = (
    "KLD: mean KL(reference ‖ quantized) in nats over the common generated prefix, 95 % interval, and top-1 "
    "token agreement; a top-k estimate from the servers' logprobs (a lower bound of the full KL)"
)
HEADERS = ["target", "vs", "task", "paired n", "k", "KL prefix mean [95 % CI]", "median", "p99", "KL first",
           "top-1 agree", "first top-1", "P(ref answer) ref / quant"]  # fmt: skip


def table_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row of text per (quantized target, task and "all") with divergence figures, for
    report.md and report.html alike."""
    out = []
    for row in report["rows"]:
        cmp = row.get("comparison") or {}
        found = [(name, (p or {}).get("divergence")) for name, p in (cmp.get("tasks") or {}).items()]
        for name, d in [*found, ("all", cmp.get("divergence"))]:
            if not d:
                continue
            kl = d["kl_prefix"]
            answer = d.get("answer_probability")
            out.append([
                row["target"], row.get("reference") or "", name, str(d["n"]), str(d["k"]),
                with_interval(kl), sig(kl["median"]), sig(kl["p99"]), sig(d["kl_first"]["mean"]),
                "" if d["top1_agreement"] is None else f"{100 * d['top1_agreement']:.1f}%",
                f"{100 * d['first_top1_agreement']:.1f}%",
                "" if not answer else f"{answer['reference']:.3f} / {answer['quantized']:.3f} (n={answer['n']})",
            ])  # fmt: skip
    return out


def k_of(logprobs: Mapping[str, Sequence[Sequence[Any]]]) -> int:
    """The k a side really got: the most alternatives any stored position carried."""
    return max((len(p[2]) for positions in logprobs.values() for p in positions), default=0)


__all__ = [
    "HEADERS",
    "NOTE",
    "SampleDivergence",
    "divergences",
    "k_of",
    "position_kl",
    "sample_divergence",
    "sig",
    "summarize",
    "table_rows",
    "with_interval",
]
