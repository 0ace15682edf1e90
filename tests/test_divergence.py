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
from orchestrator.manifest import parse_manifest
from orchestrator.records import RECORD_SCHEMA, SampleRecord
from orchestrator.report import build_report, render_markdown, write_report
from orchestrator.store import RunStore


def _exact_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _top(logp: np.ndarray, k: int) -> dict[str, float]:
    order = np.argsort(-logp)[:k]
    return {f"t{i}": float(logp[i]) for i in order}


def _logsoftmax(x: np.ndarray) -> np.ndarray:
    return x - (np.log(np.sum(np.exp(x - x.max()))) + x.max())


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


def _positions(tokens: list[str], tops: list[dict[str, float]]) -> list[list[Any]]:
    return [[t, top[t], [[a, lp] for a, lp in top.items()]] for t, top in zip(tokens, tops, strict=True)]


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


def _record(target: str, i: int, right: bool, positions: list[list[Any]]) -> SampleRecord:
    letter = positions[0][0]
    return SampleRecord(
        id=f"mmlu/{i}", task="mmlu", subject=f"s{i % 3}", target=target, gold="A", reply=letter, extracted=letter,
        rule="r", correct=right, attempts=1, logprobs=positions,
    )  # fmt: skip


def _run(tmp_path: Path, shift: dict[str, float]) -> Path:
    targets = [
        {"name": name, "model": "M", "quantization": quant, "backend": "openai", "url": "http://h:1"}
        for name, quant in (("f16", "F16"), ("q8", "Q8_0"), ("q4", "Q4_K_M"))
    ]
    manifest = parse_manifest({"run": {"name": "r", "output_dir": str(tmp_path)}, "tasks": {"mmlu": {}},
                               "targets": targets, "generation": {"logprobs": 4}})  # fmt: skip
    run = tmp_path / "r"
    store = RunStore(run)
    store.write_meta({"run_id": "r", "manifest": manifest.to_dict(), "setup": {"name": "qwen", "version": "qwen@2"},
                      "samples": {"mmlu": 60}, "record_schema": RECORD_SCHEMA})  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(60):
        logits = rng.normal(0, 2, 4)
        for name in ("f16", "q8", "q4"):
            noisy = _logsoftmax(logits + rng.normal(0, shift[name], 4))
            top = {letter: float(v) for letter, v in zip("ABCD", noisy, strict=True)}
            best = max(top, key=top.__getitem__)
            store.writer(name, "mmlu", "qwen@2").write(_record(name, i, best == "A", _positions([best], [top])))
    store.close()
    return run


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
