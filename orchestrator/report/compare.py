"""Two runs side by side (the same checkpoints, e.g. on two serving backends): each figure for
A, B and B - A, and each task's B - A paired on the samples both answered."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator.registry import TASKS
from orchestrator.report import cells as c
from orchestrator.report.model import PairedResult, Report, Row, as_report
from orchestrator.setups import store_key
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from orchestrator.verdicts import paired_runs


def _accuracy(name: str) -> Callable[[Row], float | None]:
    return lambda r: agg.accuracy if (agg := r.tasks.get(name)) is not None else None


def phase_figure(row: Row, key: str, batch1: bool = False) -> float | None:
    """A figure of a row's speed phase: its level at the run's concurrency, or batch 1."""
    phase = row.speed_phase
    level = None if phase is None else (phase.batch1 if batch1 else phase.main)
    return None if level is None else level.get(key)


Figure = Callable[[Row], "float | None"]
COMPARED: tuple[tuple[str, Figure, float], ...] = (
    ("Average", lambda r: r.average, 100.0),
    *((title, _accuracy(name), 100.0) for name, title in TASKS.items()),
    # Speed from each run's speed phase (the same workload on both sides; none in a run without one).
    ("req/s", lambda r: phase_figure(r, "requests_per_s"), 1.0),
    ("out tok/s", lambda r: phase_figure(r, "output_tokens_per_s"), 1.0),
    ("TTFT p50 ms", lambda r: phase_figure(r, "ttft_p50_ms"), 1.0),
    ("TPOT p50 ms", lambda r: phase_figure(r, "tpot_p50_ms"), 1.0),
    ("batch-1 tok/s", lambda r: phase_figure(r, "decode_tokens_per_s", batch1=True), 1.0),
)


def records_of(run_dir: Path, report: Report, targets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each target's records per task of a run (its setup's files)."""
    store = RunStore(run_dir)
    key = store_key(report.setup_version)
    return {t: {name: store.records(t, name, key) for name in report.tasks} for t in targets}


TITLES_TO_TASKS = {title: name for name, title in TASKS.items()}


def compare_reports(
    a_data: Report | Mapping[str, Any],
    b_data: Report | Mapping[str, Any],
    a_dir: Path | None = None,
    b_dir: Path | None = None,
) -> dict[str, Any]:
    """Rows of two runs matched by (model, quantization): each figure for A, B and B - A; with the
    run directories, each task's B - A paired on the samples both answered (same id and prompt)."""
    a, b = as_report(a_data), as_report(b_data)
    # A noise-floor row repeats its reference's checkpoint: never the one its model and quantization name.
    b_rows = {(r.model, r.quantization): r for r in b.rows if not r.noise_of}
    rows: list[dict[str, Any]] = []
    matched: list[tuple[str, str]] = []  # (A's target, B's target) per row
    for ra in a.rows:
        rb = None if ra.noise_of else b_rows.get((ra.model, ra.quantization))
        if rb is None:
            continue
        matched.append((ra.target, rb.target))
        figures = {}
        for name, get, scale in COMPARED:
            va, vb = get(ra), get(rb)
            figures[name] = {
                "a": None if va is None else va * scale,
                "b": None if vb is None else vb * scale,
                "delta": None if va is None or vb is None else (vb - va) * scale,
            }
        rows.append(
            {
                "model": ra.model,
                "quantization": ra.quantization,
                "a": {"target": ra.target, "backend": c.backend(ra)},
                "b": {"target": rb.target, "backend": c.backend(rb)},
                "figures": figures,
            }
        )
    if a_dir is not None and b_dir is not None and rows:
        pairs = matched
        shared = [n for n in a.tasks if n in b.tasks]
        tasks = {n: build_task(n, None, setup=a.setup) for n in shared}
        recs_a = records_of(a_dir, a, [p[0] for p in pairs])
        recs_b = records_of(b_dir, b, [p[1] for p in pairs])
        for row, paired in zip(rows, paired_runs(pairs, recs_a, recs_b, tasks), strict=True):
            row["paired"] = paired
    return {"a": a.run_id, "b": b.run_id, "setups": [a.setup_version, b.setup_version], "rows": rows}


def render_comparison(cmp: dict[str, Any]) -> Table:
    """Rich table: per checkpoint, each figure as A | B | delta."""
    table = Table(title=f"{cmp['a']} (A) vs {cmp['b']} (B)", caption=f"paired Δ: B - A on the same samples. {c.LEGEND}")
    table.add_column("Model", style="bold")
    table.add_column("Quantization")
    table.add_column("Backend A / B")
    for name, _get, _scale in COMPARED:
        table.add_column(f"{name}\nA / B (Δ)", justify="right")
    for row in cmp["rows"]:
        cells = []
        for name, _get, _scale in COMPARED:
            f = row["figures"][name]
            if f["a"] is None and f["b"] is None:
                cells.append("")
                continue
            delta = "" if f["delta"] is None else f" ({f['delta']:+.1f})"
            cell = f"{c.num(f['a'], '{:.1f}') or '-'} / {c.num(f['b'], '{:.1f}') or '-'}{delta}"
            found = (row.get("paired") or {}).get(TITLES_TO_TASKS.get(name, ""))
            paired = PairedResult.from_json(found) if found else None
            if paired is not None and paired.delta is not None:
                cell += f"\npaired Δ {c.delta(paired)} (n={paired.n})"
            cells.append(cell)
        table.add_row(row["model"], row["quantization"], f"{row['a']['backend']} / {row['b']['backend']}", *cells)
    return table
