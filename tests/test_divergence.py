"""Divergence from the reference's logprobs: the top-k KL estimate against the exact KL, the common
prefix, the answer letter, and the report's KLD figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator import divergence
from orchestrator.report import build_report, render_markdown, write_report
from orchestrator.report.document import _token_cells
from tests.support.synthetic import kl_run as _run
from tests.support.synthetic import logsoftmax as _logsoftmax
from tests.support.synthetic import positions as _positions


def _exact_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _top(logp: np.ndarray, k: int) -> dict[str, float]:
    order = np.argsort(-logp)[:k]
    return {f"t{i}": float(logp[i]) for i in order}


def test_the_top_k_estimate_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below_it() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        logits = rng.normal(0, 3, 50)
        lp, lq = _logsoftmax(logits), _logsoftmax(logits + rng.normal(0, 0.5, 50))
        exact = _exact_kl(np.exp(lp), np.exp(lq))
        assert divergence.position_kl(_top(lp, 50), _top(lq, 50)) == pytest.approx(exact, rel=1e-9, abs=1e-12)
        estimates = [divergence.position_kl(_top(lp, k), _top(lq, k)) for k in (1, 5, 20)]
        # Merging outcomes never increases a KL divergence: each estimate is at most the exact one.
        assert all(e <= exact + 1e-12 for e in estimates)
    same = _top(_logsoftmax(rng.normal(0, 3, 50)), 5)
    assert divergence.position_kl(same, same) == pytest.approx(0.0, abs=1e-12)


def test_the_common_prefix_ends_at_the_first_differing_token() -> None:
    a = {"A": math.log(0.7), "B": math.log(0.2), "C": math.log(0.1)}
    b = {"A": math.log(0.5), "B": math.log(0.4), "C": math.log(0.1)}
    flipped = {"B": math.log(0.6), "A": math.log(0.3), "C": math.log(0.1)}
    ref = _positions(["A", "A", "A", "A"], [a, a, a, a])
    quant = _positions(["A", "B", "C", "C"], [b, flipped, a, a])
    d = divergence.sample_divergence(ref, quant, answer="A")
    assert d is not None
    # Positions 0 and 1 share their context (1 is where the tokens differ); 2 and 3 do not.
    assert d.positions == 2 and d.top1_agree == 1 and d.first_top1
    kl_ab, kl_af = divergence.position_kl(a, b), divergence.position_kl(a, flipped)
    assert d.first_kl == pytest.approx(kl_ab) and d.prefix_kl == pytest.approx((kl_ab + kl_af) / 2)
    assert d.ref_answer_p == pytest.approx(0.7) and d.quant_answer_p == pytest.approx(0.5)
    assert divergence.sample_divergence([], quant) is None


def test_the_report_ranks_quantizations_by_kl_and_shows_the_kld_column(tmp_path: Path) -> None:
    run = _run(tmp_path, {"f16": 0.0, "q8": 0.05, "q4": 0.6})
    report = build_report(run)
    rows = {r["target"]: r for r in report["rows"]}
    q8, q4 = rows["q8"]["comparison"]["divergence"], rows["q4"]["comparison"]["divergence"]
    assert q8["n"] == q4["n"] == 60 and q8["k"] == 4
    assert q8["kl_prefix"]["mean"] < q4["kl_prefix"]["mean"]
    lo, hi = q4["kl_prefix"]["interval"]
    assert lo <= q4["kl_prefix"]["mean"] <= hi and q4["kl_prefix"]["median"] <= q4["kl_prefix"]["p99"]
    assert q8["first_top1_agreement"] >= q4["first_top1_agreement"]
    assert q4["answer_probability"]["n"] > 0
    per_task = rows["q4"]["comparison"]["tasks"]["mmlu"]["divergence"]
    assert per_task["kl_first"]["mean"] == pytest.approx(q4["kl_first"]["mean"])
    assert "top-4" in q4["estimate"]
    json.dumps(report)  # report.json takes it as it is
    md = render_markdown(report)
    header = next(line for line in md.splitlines() if "Δ Avg" in line)
    assert "| Δ Avg | KLD | MMLU |" in header
    assert divergence.sig(q4["kl_prefix"]["mean"]) in md and "lower bound of the full KL" in md
    assert "## Divergence from the reference" in md and len(q4["quantiles"]) == 101


def test_a_run_without_logprobs_has_no_kld_column(tmp_path: Path) -> None:
    run = _run(tmp_path, {"f16": 0.0, "q8": 0.05, "q4": 0.6})
    for path in (run / "samples").rglob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "logprobs": None}) + "\n" for r in lines))
    report = build_report(run)
    assert all((r.get("comparison") or {}).get("divergence") is None for r in report["rows"])
    assert "KLD" not in render_markdown(report)


def test_the_page_shows_the_divergence_table_and_plot(tmp_path: Path) -> None:
    run = _run(tmp_path, {"f16": 0.0, "q8": 0.05, "q4": 0.6})
    write_report(run)
    page = (run / "report.html").read_text()
    assert "Divergence from the reference" in page and "Per-sample divergence from the reference" in page
    # The plot is one more embedded figure than a run without logprobs has.
    figures = page.count("data:image/png;base64,")
    for path in (run / "samples").rglob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "logprobs": None}) + "\n" for r in lines))
    write_report(run)
    assert (run / "report.html").read_text().count("data:image/png;base64,") == figures - 1


def _listed(logp: np.ndarray, k: int) -> tuple[dict[int | str, float], float]:
    """A side's top-k by token id, and its cap: the k-th listed probability."""
    order = np.argsort(-logp)[:k]
    return {int(i): float(logp[i]) for i in order}, float(np.exp(logp[order[-1]]))


def _minimum_by_solver(ref: dict[int | str, float], quant: dict[int | str, float], cap_r: float, cap_q: float) -> float:
    """The bound's definition solved by a general-purpose optimiser (scipy's SLSQP, several
    starts): the smallest bucketed KL over every unreported value the caps allow."""
    from scipy.optimize import minimize

    shared = ref.keys() & quant.keys()
    known = sum(math.exp(ref[t]) * (ref[t] - quant[t]) for t in shared)
    pb = np.array([math.exp(v) for t, v in ref.items() if t not in quant])
    qc = np.array([math.exp(v) for t, v in quant.items() if t not in ref])
    left_p = max(0.0, 1 - sum(math.exp(ref[t]) for t in shared) - pb.sum())
    left_q = max(0.0, 1 - sum(math.exp(quant[t]) for t in shared) - qc.sum())
    nb = len(pb)

    def objective(z: np.ndarray) -> float:
        x, y = z[:nb], z[nb:]
        rest_p, rest_q = left_p - y.sum(), left_q - x.sum()
        value = float(np.sum(pb * np.log(pb / np.maximum(x, 1e-10))))
        value += float(np.sum(np.where(y > 0, y * np.log(np.maximum(y, 1e-300) / np.maximum(qc, 1e-300)), 0.0)))
        return value + (rest_p * math.log(rest_p / max(rest_q, 1e-10)) if rest_p > 0 else 0.0)

    if not nb and not len(qc):
        return known + objective(np.zeros(0))
    bounds = [(1e-12, max(1e-12, min(cap_q, left_q)))] * nb + [(0.0, min(cap_r, left_p))] * len(qc)
    cons = [
        {"type": "ineq", "fun": lambda z: left_q - z[:nb].sum()},
        {"type": "ineq", "fun": lambda z: left_p - z[nb:].sum()},
    ]
    rng = np.random.default_rng(0)
    best = math.inf
    for _ in range(8):
        start = np.array([rng.uniform(lo, hi) for lo, hi in bounds]) * 0.5
        found = minimize(objective, start, bounds=bounds, constraints=cons, method="SLSQP", options={"ftol": 1e-14})
        if all(c["fun"](found.x) >= -1e-9 for c in cons):
            best = min(best, float(found.fun))
    return known + best


def test_the_bound_is_the_smallest_kl_both_reports_allow_and_never_above_the_exact_kl() -> None:
    rng = np.random.default_rng(11)
    for _ in range(120):
        logits = rng.normal(0, rng.uniform(0.5, 4), 30)
        lp, lq = _logsoftmax(logits), _logsoftmax(logits + rng.normal(0, rng.uniform(0.05, 3), 30))
        k = int(rng.integers(1, 8))
        (ref, cap_r), (quant, cap_q) = _listed(lp, k), _listed(lq, k)
        bound = divergence.position_kl(ref, quant, cap_r, cap_q)
        exact = _exact_kl(np.exp(lp), np.exp(lq))
        assert bound <= exact + 1e-9
        # Tighter than (or as tight as) merging every unshared token into the tail.
        assert bound >= divergence.position_kl(ref, quant) - 1e-9
        # The optimiser finds no smaller value: the bound is the minimum, not just below the truth.
        assert bound <= _minimum_by_solver(ref, quant, cap_r, cap_q) + 1e-6


def test_disjoint_top_k_lists_bound_the_kl_away_from_zero() -> None:
    """Lists that share no token (shaped like the issue's sample, F16 "A" at p = 0.13 against a
    quantization sure of "根"; that one was llama-server's entry for several byte tokens, which
    test_an_entry_for_several_tokens_lines_up_only_with_the_same_piece covers)."""
    ref = {"A": math.log(0.13), "B": math.log(0.12), "C": math.log(0.11), "D": math.log(0.1), "E": math.log(0.09)}
    quant = {"根": math.log(0.9995), "x": math.log(1e-4), "y": math.log(9e-5), "z": math.log(8e-5), "w": math.log(7e-5)}
    bound = divergence.position_kl(ref, quant, 0.09, 7e-5)
    # Each of A..E has at most 7e-5 on the quantized side: 0.55 of mass moved from ≤ 3.5e-4.
    assert bound > 0.4
    # Without the caps (nothing known of unlisted tokens) the bound is smaller, never negative.
    assert 0.0 <= divergence.position_kl(ref, quant) < bound


def _position(token: str, token_id: int, alternatives: list[tuple[str, float, int]]) -> list[Any]:
    chosen = next(lp for t, lp, i in alternatives if i == token_id)
    return [token, chosen, [[t, lp, i] for t, lp, i in alternatives], token_id]


def test_tokens_are_matched_by_id_where_the_servers_send_ids() -> None:
    """llama-server shows a chosen piece of a character as the finished character ("你") but the
    same token among the alternatives as "\\ufffd", and end-of-turn as "": by text they would be
    dropped, by id they match."""
    alts = [("\ufffd", math.log(0.6), 100), ("", math.log(0.3), 2), ("a", math.log(0.05), 7)]
    ref = [_position("你", 100, alts)]
    quant_alts = [("\ufffd", math.log(0.5), 100), ("", math.log(0.4), 2), ("a", math.log(0.05), 7)]
    quant = [_position("你", 100, quant_alts)]
    by_id = divergence.sample_divergence(ref, quant)
    assert by_id is not None and by_id.by_id == 1 and by_id.disjoint == 0
    expected = divergence.position_kl(
        {100: math.log(0.6), 2: math.log(0.3), 7: math.log(0.05)},
        {100: math.log(0.5), 2: math.log(0.4), 7: math.log(0.05)},
        0.05,
        0.05,
    )
    assert by_id.first_kl == pytest.approx(expected) and expected > 0.01
    assert by_id.dps == pytest.approx((0.5 - 0.6,))
    # The same records without ids: only "你" and "a" can be matched by text.
    strip = [[p[0], p[1], [a[:2] for a in p[2]]] for p in ref], [[p[0], p[1], [a[:2] for a in p[2]]] for p in quant]
    by_text = divergence.sample_divergence(*strip)
    assert by_text is not None and by_text.by_id == 0


def test_the_summary_has_llama_perplexity_token_statistics_and_what_the_lists_covered() -> None:
    rng = np.random.default_rng(2)
    per_sample = {}
    for i in range(40):
        positions_r, positions_q = [], []
        for _ in range(3):
            logits = rng.normal(0, 2, 12)
            lp, lq = _logsoftmax(logits), _logsoftmax(logits + rng.normal(0, 0.4, 12))
            best = int(np.argmax(lp))
            for logp, out in ((lp, positions_r), (lq, positions_q)):
                order = np.argsort(-logp)[:4]
                out.append([f"t{best}", float(logp[best]) if best in order else None,
                            [[f"t{j}", float(logp[j]), int(j)] for j in order], best])  # fmt: skip
        found = divergence.sample_divergence(positions_r, positions_q)
        assert found is not None
        per_sample[str(i)] = found
    summary = divergence.summarize(per_sample, 4, seed=1)
    assert summary is not None and summary["matched_by"] == "id"
    kls = np.array([v for d in per_sample.values() for v in d.kls])
    dps = np.array([v for d in per_sample.values() for v in d.dps])
    tokens = summary["tokens"]
    assert tokens["positions"] == len(kls) == summary["positions"]
    assert tokens["kld_percentiles"]["99"] == pytest.approx(np.percentile(kls, 99))
    assert tokens["kld_percentiles"]["50"] == pytest.approx(np.median(kls))
    assert tokens["rms_dp"] == pytest.approx(math.sqrt(np.mean(dps**2)))
    assert tokens["same_top_p"] == summary["top1_agreement"]
    assert 0 < summary["mass_covered"]["reference"] <= 1 and summary["disjoint_positions"] >= 0
    row = _token_cells(summary)
    assert row[-1] == "id" and row[0] == str(len(kls))


def test_server_token_ids_are_kept() -> None:
    from orchestrator.backends.logprobs import from_openai

    alternative = {"id": 9, "token": "\ufffd", "logprob": -0.1}
    content = [{"id": 9, "token": "你", "logprob": -0.1, "top_logprobs": [alternative]},
               {"token": "a", "logprob": -0.2, "top_logprobs": [{"token": "a", "logprob": -0.2}]}]  # fmt: skip
    assert from_openai(content) == [["你", -0.1, [["\ufffd", -0.1, 9]], 9], ["a", -0.2, [["a", -0.2]]]]


def test_vllm_token_ids_are_read_from_its_placeholders() -> None:
    """Asked with return_tokens_as_token_ids, vLLM names tokens "token_id:N": the id is kept, and the
    chosen token's text is read from its bytes (an alternative's bytes spell the placeholder)."""
    from orchestrator.backends.base import ChatRequest
    from orchestrator.backends.logprobs import from_openai
    from orchestrator.backends.openai import VLLMChat

    alternatives = [{"token": "token_id:9", "logprob": -0.1, "bytes": list(b"token_id:9")},
                    {"token": "token_id:4", "logprob": -2.5, "bytes": list(b"token_id:4")}]  # fmt: skip
    content = [{"token": "token_id:9", "logprob": -0.1, "bytes": list("你".encode()), "top_logprobs": alternatives}]
    assert from_openai(content) == [["你", -0.1, [["", -0.1, 9], ["", -2.5, 4]], 9]]
    backend = VLLMChat("http://127.0.0.1:1", None, model="m")  # build_body needs no session
    asked = backend.build_body(ChatRequest((("user", "q"),), max_tokens=2, seed=1, logprobs=5))
    assert asked["return_tokens_as_token_ids"] is True and asked["top_logprobs"] == 5
    plain = backend.build_body(ChatRequest((("user", "q"),), max_tokens=2, seed=1))
    assert "return_tokens_as_token_ids" not in plain


def test_an_entry_for_several_tokens_lines_up_only_with_the_same_piece() -> None:
    """llama-server reports "汉" (three byte tokens) as one entry with its last token's id and
    probabilities; the entry is marked, and where the other side emitted another piece (here a
    space, one token) the two are not compared (their indices are not the same position)."""
    from orchestrator.backends.logprobs import from_openai

    def entry(
        token_id: int, text: str, own: bytes, p: float, alts: list[tuple[int, str, bytes, float]]
    ) -> dict[str, Any]:
        top = [{"id": i, "token": t, "bytes": list(b), "logprob": math.log(q)} for i, t, b, q in alts]
        return {"id": token_id, "token": text, "bytes": list(own), "logprob": math.log(p), "top_logprobs": top}

    letter = entry(49, "A", b"A", 0.26, [(49, "A", b"A", 0.26), (51, "C", b"C", 0.2)])
    merged = entry(
        134, " 汉", " 汉".encode(), 0.986, [(134, "\ufffd", b"\x89", 0.986), (230, "\ufffd", b"\x8a", 0.012)]
    )
    space = entry(216, " ", b" ", 0.378, [(216, " ", b" ", 0.378), (13223, " ", b"  ", 0.327)])
    ref, quant = from_openai([letter, merged]), from_openai([letter, space])
    assert ref[1][4] == 1 and len(quant[1]) == 4 and len(ref[0]) == 4  # only the merged entry is marked
    found = divergence.sample_divergence(ref, quant)
    assert found is not None and found.positions == 1  # the letter only: no KL of 4 nats from misaligned entries
    same = divergence.sample_divergence(ref, from_openai([letter, merged]))
    assert same is not None and same.positions == 2 and same.kls[1] == pytest.approx(0.0, abs=1e-12)
