"""Tables from the store only: accuracy and speed side by side, per model and quantization.

Layout follows the Qwen docs' "Performance of Quantized Models": rows grouped by model, one row per
quantization, Average | MMLU | C-Eval | IFEval, then speed columns from the same requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator import timing
from orchestrator.store import RunStore
from orchestrator.tasks import SETUP_VERSIONS, build_task

ACCURACY_COLUMNS = (("mmlu", "MMLU"), ("ceval", "C-Eval"), ("ifeval", "IFEval"))
REFERENCE_QUANTS = ("BF16", "FP16", "F16", "FP32", "F32")


def speed_figures(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Throughput and latency of a target's answered requests (all its tasks)."""
    ok = [r for r in records if not r.get("error") and r.get("timing")]
    intervals = [(r["timing"]["wall_send"], r["timing"]["wall_send"] + r["timing"]["e2e"]) for r in ok]
    busy = timing.busy_seconds(intervals)
    out_tokens = [r["completion_tokens"] for r in ok if r.get("completion_tokens") is not None]
    ttfts = [t for r in ok if (t := timing.ttft(r["timing"])) is not None]
    tpots = [t for r in ok if (t := timing.tpot(r["timing"], r.get("completion_tokens"))) is not None]
    e2es = [timing.e2e(r["timing"]) for r in ok]
    sources = sorted({r.get("token_source", "none") for r in ok})
    return {
        "requests": len(ok),
        "busy_seconds": busy,
        "requests_per_s": len(ok) / busy if busy > 0 else None,
        "output_tokens": sum(out_tokens),
        "output_tokens_per_s": sum(out_tokens) / busy if busy > 0 else None,
        "ttft_p50_ms": _ms(timing.percentile(ttfts, 50)),
        "tpot_p50_ms": _ms(timing.percentile(tpots, 50)),
        "e2e_p50_ms": _ms(timing.percentile(e2es, 50)),
        "token_sources": sources,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def build_report(run_dir: Path) -> dict[str, Any]:
    """Every figure of a run, computed from run.json and the sample records."""
    store = RunStore(run_dir)
    meta = store.require_meta()
    manifest = meta["manifest"]
    setup = manifest["run"]["setup"]
    task_names = list(manifest["tasks"])
    rows = []
    for t in manifest["targets"]:
        all_records: list[dict[str, Any]] = []
        tasks: dict[str, Any] = {}
        for name in task_names:
            records = store.records(t["name"], name, setup)
            all_records += records
            agg = build_task(name, None).aggregate(records)
            # The report never hides records that were not sent: n counts what is on disk.
            tasks[name] = agg
        accs = [v["accuracy"] for v in tasks.values() if v["accuracy"] is not None]
        server = meta.get("servers", {}).get(t["name"], {})
        rows.append(
            {
                "target": t["name"],
                "model": t["model"],
                "quantization": t["quantization"],
                "backend": t["backend"],
                "server_version": server.get("version"),
                "served_model": server.get("served_model"),
                "replicas": _replica_counts(all_records),
                "tasks": tasks,
                "average": sum(accs) / len(accs) if accs else None,
                "errors": sum(v["errors"] for v in tasks.values()),
                "speed": speed_figures(all_records),
            }
        )
    _add_deltas(rows)
    return {
        "run_id": meta.get("run_id", run_dir.name),
        "setup": setup,
        "setup_version": SETUP_VERSIONS.get(setup),
        "tasks": task_names,
        "rows": rows,
    }


def _replica_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Answered requests per replica URL (targets with several URLs)."""
    counts: dict[str, int] = {}
    for r in records:
        if r.get("replica") and not r.get("error"):
            counts[r["replica"]] = counts.get(r["replica"], 0) + 1
    return counts


def _backend_cell(row: dict[str, Any]) -> str:
    version = row.get("server_version")
    return f"{row['backend']} {version}" if version else row["backend"]


def _add_deltas(rows: list[dict[str, Any]]) -> None:
    """What each quantization costs: Average minus that of the model's BF16/FP16 row."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for group in by_model.values():
        ref = next(
            (r for q in REFERENCE_QUANTS for r in group if r["quantization"].upper() == q and r["average"] is not None),
            None,
        )
        for r in group:
            r["reference"] = None if ref is None else ref["target"]
            r["delta_average"] = (
                None if ref is None or r["average"] is None or r is ref else r["average"] - ref["average"]
            )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "" if value is None else fmt.format(value)


def _cells(row: dict[str, Any]) -> list[str]:
    cells = [_pct(row["average"])]
    cells.append("" if row["delta_average"] is None else f"{100 * row['delta_average']:+.1f}")
    for key, _title in ACCURACY_COLUMNS:
        agg = row["tasks"].get(key)
        if agg is None or agg["accuracy"] is None:
            cells.append("")
            continue
        # The unparsed rate stands next to the accuracy it qualifies: a low score with many
        # unparsed replies is an extraction problem, not (only) a model problem.
        unparsed = f", {_pct(agg['unparsed_rate'])}% unparsed" if agg.get("unparsed") else ""
        cells.append(f"{_pct(agg['accuracy'])} (n={agg['n']}{unparsed})")
    sp = row["speed"]
    cells += [
        _num(sp["requests_per_s"]),
        _num(sp["output_tokens_per_s"], "{:.1f}"),
        _num(sp["ttft_p50_ms"], "{:.0f}"),
        _num(sp["tpot_p50_ms"], "{:.1f}"),
        str(row["errors"]),
    ]
    return cells


HEADERS = [
    "Average",
    "Δ Avg",
    *[title for _k, title in ACCURACY_COLUMNS],
    "req/s",
    "out tok/s",
    "TTFT p50 ms",
    "TPOT p50 ms",
    "errors",
]


def render_table(report: dict[str, Any]) -> Table:
    """The rich table: one section per model, one row per quantization."""
    table = Table(title=f"Run {report['run_id']} · setup {report['setup_version']}", show_lines=False)
    table.add_column("Model", style="bold")
    table.add_column("Quantization")
    table.add_column("Backend")
    for h in HEADERS:
        table.add_column(h, justify="right")
    last_model = None
    for row in report["rows"]:
        if last_model is not None and row["model"] != last_model:
            table.add_section()
        model_cell = row["model"] if row["model"] != last_model else ""
        table.add_row(model_cell, row["quantization"], _backend_cell(row), *_cells(row))
        last_model = row["model"]
    return table


def render_markdown(report: dict[str, Any]) -> str:
    """The same table in Markdown, plus extraction audit per target x task."""
    head = ["Model", "Quantization", "Backend", *HEADERS]
    lines = [
        f"# Run {report['run_id']} (setup `{report['setup_version']}`)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join([row["model"], row["quantization"], _backend_cell(row), *_cells(row)]) + " |")
    lines += [
        "",
        "## Extraction audit",
        "",
        "| Target | Task | n | unparsed | errors |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for name, agg in row["tasks"].items():
            lines.append(f"| {row['target']} | {name} | {agg['n']} | {_pct(agg['unparsed_rate'])}% | {agg['errors']} |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> dict[str, Any]:
    """Compute the report and write report.json and report.md into the run dir."""
    report = build_report(run_dir)
    store = RunStore(run_dir)
    store.write_json("report.json", report)
    (run_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------
# Two runs side by side (same checkpoints, e.g. two serving backends)
# ---------------------------------------------------------------------------------------------
Figure = Callable[[dict[str, Any]], "float | None"]
COMPARED: tuple[tuple[str, Figure, float], ...] = (
    ("Average", lambda r: r["average"], 100.0),
    ("MMLU", lambda r: (r["tasks"].get("mmlu") or {}).get("accuracy"), 100.0),
    ("C-Eval", lambda r: (r["tasks"].get("ceval") or {}).get("accuracy"), 100.0),
    ("IFEval", lambda r: (r["tasks"].get("ifeval") or {}).get("accuracy"), 100.0),
    ("req/s", lambda r: r["speed"]["requests_per_s"], 1.0),
    ("out tok/s", lambda r: r["speed"]["output_tokens_per_s"], 1.0),
    ("TTFT p50 ms", lambda r: r["speed"]["ttft_p50_ms"], 1.0),
    ("TPOT p50 ms", lambda r: r["speed"]["tpot_p50_ms"], 1.0),
)


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rows of two runs matched by (model, quantization): each figure for A, B and B - A."""
    b_rows = {(r["model"], r["quantization"]): r for r in b["rows"]}
    rows = []
    for ra in a["rows"]:
        rb = b_rows.get((ra["model"], ra["quantization"]))
        if rb is None:
            continue
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
                "model": ra["model"],
                "quantization": ra["quantization"],
                "a": {"target": ra["target"], "backend": _backend_cell(ra)},
                "b": {"target": rb["target"], "backend": _backend_cell(rb)},
                "figures": figures,
            }
        )
    return {"a": a["run_id"], "b": b["run_id"], "setups": [a["setup_version"], b["setup_version"]], "rows": rows}


def render_comparison(cmp: dict[str, Any]) -> Table:
    """Rich table: per checkpoint, each figure as A | B | delta."""
    table = Table(title=f"{cmp['a']} (A) vs {cmp['b']} (B)")
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
            cells.append(f"{_num(f['a'], '{:.1f}') or '-'} / {_num(f['b'], '{:.1f}') or '-'}{delta}")
        table.add_row(row["model"], row["quantization"], f"{row['a']['backend']} / {row['b']['backend']}", *cells)
    return table
