"""Tables from the store only: accuracy and speed side by side, per model and quantization.

Layout follows the Qwen docs' "Performance of Quantized Models": rows grouped by model, one row per
quantization, Average | MMLU | C-Eval | IFEval, then speed columns from the same requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator import divergence
from orchestrator.published import cell_text, compare_published, load_references, published_columns
from orchestrator.registry import MULTIPLE_CHOICE_TASKS, TASKS
from orchestrator.saturation import Saturation, core_share, server_side
from orchestrator.setups import run_setup_version, store_key
from orchestrator.stats import METHODS
from orchestrator.store import RunStore, atomic_write
from orchestrator.summary import summarize_run
from orchestrator.tasks import build_task
from orchestrator.verdicts import compare, paired_runs

ACCURACY_COLUMNS = tuple(TASKS.items())


def build_report(run_dir: Path, reference: Path | None = None) -> dict[str, Any]:
    """Every figure of a run, computed from run.json and the sample records; ``reference``: a
    published table to set the measurements against (the shipped Qwen table by default)."""
    store = RunStore(run_dir)
    meta = store.require_meta()
    manifest = meta["manifest"]
    setup = manifest["run"]["setup"]
    version = run_setup_version(meta)
    task_names = list(manifest["tasks"])
    names = [t["name"] for t in manifest["targets"]]
    summaries = summarize_run(run_dir, names, task_names, setup, store_key(version), meta.get("samples") or {})
    rows = []
    sides = {}
    for t, summary in zip(manifest["targets"], summaries, strict=True):
        server = meta.get("servers", {}).get(t["name"], {})
        sides.update({(t["name"], name): side for name, side in summary.sides.items()})
        rows.append(
            {
                "target": t["name"],
                # Why the target stopped early (its server died, the error budget ran out), if it did.
                "failure": meta.get("failures", {}).get(t["name"]),
                "model": t["model"],
                "quantization": t["quantization"],
                "noise_of": t.get("noise_of"),
                "weights": t.get("weights"),
                "concurrency": t.get("concurrency"),
                "backend": t["backend"],
                "server_version": server.get("version"),
                "served_model": server.get("served_model"),
                "replicas": summary.replicas,
                # The report never hides records that were not sent: n counts what is on disk.
                "tasks": summary.tasks,
                "errors": sum(v["errors"] for v in summary.tasks.values()),
                "speed": summary.speed,
                "saturation": _saturation(summary.speed, server),
                **summary.average,
            }
        )
    # Each quantization against its reference.
    compare(rows, sides)
    report = {
        "run_id": meta.get("run_id", run_dir.name),
        "setup": setup,
        "setup_version": version,
        "tasks": task_names,
        "rows": rows,
    }
    report["published"] = compare_published(report, load_references(reference), manifest["tasks"])
    report["intervals"] = interval_methods(report)
    return report


def interval_methods(report: dict[str, Any]) -> dict[str, Any]:
    """Which method made each kind of interval in this report (figure -> method), what each method
    is (stats.METHODS), and the headline figures' methods under short names (the terminal's line):
    every interval printed can be traced to how it was made."""
    figures: dict[str, str] = {}
    headline: dict[str, str] = {}  # the caption's subset: each task's headline, Average, Δ, KLD

    def add(figure: str, method: str, short: str | None) -> None:
        figures.setdefault(figure, method)
        if short is not None:
            headline.setdefault(short, method)

    for row in report["rows"]:
        for name, agg in row["tasks"].items():
            title = TASKS.get(name, name)
            for metric, method in (agg.get("interval_methods") or {}).items():
                main = metric == agg.get("headline")
                add(f"{title} {metric}{' (headline)' if main else ''}", method, title if main else None)
        if row.get("average") is not None:
            add("Average", row.get("average_interval_method", "mover"), "Average")
        cmp = row.get("comparison") or {}
        for name, p in (cmp.get("tasks") or {}).items():
            add(f"Δ {TASKS.get(name, name)}", p.get("interval_method", ""), f"Δ {TASKS.get(name, name)}")
            if (p.get("divergence") or {}).get("kl_prefix"):
                add("KLD mean", p["divergence"]["kl_prefix"].get("interval_method", "bootstrap"), "KLD mean")
        if cmp.get("average"):
            add("Δ Average", cmp["average"].get("interval_method", ""), "Δ Average")
    used = dict.fromkeys(figures.values())
    return {"figures": figures, "headline": headline, "methods": {m: METHODS[m] for m in used if m in METHODS}}


def interval_lines(report: dict[str, Any]) -> list[str]:
    """One line per kind of interval: the figure, its method and what the method is."""
    found = report.get("intervals") or interval_methods(report)
    return [f"{figure}: {found['methods'].get(m, m)}" for figure, m in found["figures"].items()]


def _interval_caption(report: dict[str, Any]) -> str:
    """The headline figures' interval methods in one line, grouped by method."""
    found = report.get("intervals") or interval_methods(report)
    by_method: dict[str, list[str]] = {}
    for figure, method in found["headline"].items():
        by_method.setdefault(method, []).append(figure)
    listed = "; ".join(f"{m} ({', '.join(figures)})" for m, figures in by_method.items())
    return f"95 % intervals: {listed}; report.md says what each method is" if listed else ""


def _saturation(speed: dict[str, Any], server: dict[str, Any]) -> dict[str, Any] | None:
    """Who set the pace for this target (saturation.py), from its speed figures and run.json."""
    if not speed.get("requests"):
        return None
    client = server.get("client") or {}
    return Saturation(
        client_core_share=core_share(client.get("cpu_s"), client.get("wall_s")),
        send_delay_ms=speed.get("send_delay_p50_ms"),
        e2e_ms=speed.get("e2e_p50_ms"),
        ttft_ms=speed.get("ttft_p50_ms"),
        tpot_ms=speed.get("tpot_p50_ms"),
        server_tpot_ms=speed.get("server_tpot_p50_ms"),
        server_wait_ms=speed.get("server_wait_p50_ms"),
        **server_side(server.get("managed"), server.get("metrics_before"), server.get("metrics_after")),
    ).to_json()


def _quant_cell(row: dict[str, Any]) -> str:
    """A noise-floor row is its reference sent again: say so where the quantization stands."""
    if not row.get("noise_of"):
        return str(row["quantization"])
    return f"{row['quantization']} (repeat{', c=' + str(row['concurrency']) if row.get('concurrency') else ''})"


def _backend_cell(row: dict[str, Any]) -> str:
    version = row.get("server_version")
    return f"{row['backend']} {version}" if version else row["backend"]


def _pct(value: float | None, empty: str = "") -> str:
    return empty if value is None else f"{100 * value:.1f}"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "" if value is None else fmt.format(value)


# One mark per verdict, so a column of them reads at a glance (the legend is under every table).
MARKS = {"loss": "▼", "gain": "▲", "no detectable change": "≈"}
LEGEND = (
    "▼ loss · ▲ gain · ≈ no detectable change (interval within ±1 pt) · ? inconclusive (n too small) · "
    "~ inside the noise floor"
)


def _mark(verdict: str) -> str:
    mark = next(
        (m for v, m in MARKS.items() if verdict.startswith(v)), "?" if verdict.startswith("inconclusive") else ""
    )
    return mark + ("~" if verdict.endswith("(inside the noise floor)") else "")


def _ci(ci: list[float] | tuple[float, float] | None, signed: bool = False, note: str | None = None) -> str:
    if ci is None:
        return "[no interval]" if note else ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100 * ci[0])}, {fmt.format(100 * ci[1])}]"


def _delta(p: dict[str, Any] | None) -> str:
    """A paired difference: Δ in points, its interval and the verdict's mark."""
    if not p or p.get("delta") is None:
        return ""
    ci = _ci(p["interval"], signed=True, note=p.get("interval_note"))
    return f"{100 * p['delta']:+.1f} {ci} {_mark(p['verdict'])}".strip()


def _ratio(value: float | None) -> str:
    return "" if value is None else f" (×{value:.2f})"


def _kld(cmp: dict[str, Any]) -> str:
    """Mean KL(ref ‖ quant) over the common generated prefix, all tasks, with its interval."""
    found = cmp.get("divergence")
    if not found:
        return ""
    return f"{divergence.with_interval(found['kl_prefix'])} top1 {100 * (found['top1_agreement'] or 0):.1f}%"


def _cells(row: dict[str, Any], sep: str = "\n", kld: bool = False) -> list[str]:
    if row.get("failure") and row["average"] is None and not any(a["n"] for a in row["tasks"].values()):
        # Nothing measured: say so instead of a row of blanks or zeros.
        blank = ["failed", "", *([""] if kld else []), *["" for _ in ACCURACY_COLUMNS], "", "", "", ""]
        return [*blank, str(row["errors"])]
    cmp = row.get("comparison") or {}
    if row["average"] is not None:
        ci = _ci(row.get("average_interval"), note=row.get("average_interval_note"))
        cells = [f"{_pct(row['average'])} {ci}".strip()]
    else:
        cells = ["–" if not row.get("average_missing") else f"– ({row['average_missing']})"]
    cells.append(_delta(cmp.get("average")))
    if kld:
        cells.append(_kld(cmp))
    for key, _title in ACCURACY_COLUMNS:
        agg = row["tasks"].get(key)
        if agg is None or agg["accuracy"] is None:
            cells.append("")
            continue
        # The unparsed rate stands next to the accuracy it qualifies: a low score with many
        # unparsed replies is an extraction problem, not (only) a model problem.
        unparsed = f", {_pct(agg['unparsed_rate'])}% unparsed" if agg.get("unparsed") else ""
        ci = _ci(agg.get("interval"), note=agg.get("interval_note"))
        cell = f"{_pct(agg['accuracy'])} {ci} (n={agg['n']}{unparsed})"
        delta = _delta((cmp.get("tasks") or {}).get(key))
        cells.append(cell + (f"{sep}Δ {delta}" if delta else ""))
    sp = row["speed"]
    ratios = row.get("speed_vs_reference") or {}
    cells += [
        _num(sp["requests_per_s"]),
        _num(sp["output_tokens_per_s"], "{:.1f}") + _ratio(ratios.get("output_tokens_per_s")),
        _num(sp["ttft_p50_ms"], "{:.0f}") + _ratio(ratios.get("ttft_p50_ms")),
        # The server's own time per token beside the client's, where it gives one (llama-server).
        _num(sp["tpot_p50_ms"], "{:.1f}")
        + (f"{sep}server {sp['server_tpot_p50_ms']:.1f}" if sp.get("server_tpot_p50_ms") is not None else ""),
        str(row["errors"]),
    ]
    return cells


KLD_NOTE = divergence.NOTE


def _has_kld(report: dict[str, Any]) -> bool:
    """Some row was compared on logprobs (the run asked for them): the KLD column is shown."""
    return any((row.get("comparison") or {}).get("divergence") for row in report["rows"])


def _headers(report: dict[str, Any]) -> list[str]:
    return [*HEADERS[:2], *(["KLD"] if _has_kld(report) else []), *HEADERS[2:]]


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
    for h in _headers(report):
        table.add_column(h, justify="right")
    last_model = None
    for row in report["rows"]:
        if last_model is not None and row["model"] != last_model:
            table.add_section()
        model_cell = row["model"] if row["model"] != last_model else ""
        table.add_row(model_cell, _quant_cell(row), _backend_cell(row), *_cells(row, kld=_has_kld(report)))
        last_model = row["model"]
    failed = [row["failure"] for row in report["rows"] if row.get("failure")]  # each names its target
    notes = [n for n in dict.fromkeys(row.get("comparison_note") for row in report["rows"]) if n]
    table.caption = "\n".join(
        [
            "Δ: paired difference against the model's reference row, 95 % interval; " + LEGEND,
            *([KLD_NOTE] if _has_kld(report) else []),
            *([caption] if (caption := _interval_caption(report)) else []),
            *notes,
            *(["failed: " + " · ".join(failed)] if failed else []),
            *_pace_lines(report),
        ]
    )
    return table


def _pace_lines(report: dict[str, Any]) -> list[str]:
    """One line per target that says who set its pace: the server or the client."""
    return [f"{row['target']}: {row['saturation']['line']}" for row in report["rows"] if row.get("saturation")]


def render_markdown(report: dict[str, Any]) -> str:
    """The same table in Markdown, plus extraction audit per target x task."""
    head = ["Model", "Quantization", "Backend", *_headers(report)]
    lines = [
        f"# Run {report['run_id']} (setup `{report['setup_version']}`)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in report["rows"]:
        cells = [row["model"], _quant_cell(row), _backend_cell(row), *_cells(row, "<br>", kld=_has_kld(report))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Δ: paired difference against the model's reference row, 95 % interval. {LEGEND}"]
    if _has_kld(report):
        lines += ["", KLD_NOTE + "."]
    lines += _comparisons_markdown(report)
    kl_rows = divergence.table_rows(report)
    if kl_rows:
        lines += ["", "## Divergence from the reference (servers' top-k logprobs)", ""]
        lines += ["| " + " | ".join(divergence.HEADERS) + " |", "|" + "|".join("---" for _ in divergence.HEADERS) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in kl_rows]
        lines += ["", KLD_NOTE + "."]
    lines += _published_markdown(report)
    lines += _averages_markdown(report)
    if methods := interval_lines(report):
        lines += ["", "## How the intervals are made", "", *(f"- {_md_cell(m)}" for m in methods)]
    if pace := _pace_lines(report):
        lines += ["", "## Who set the pace", "", *(f"- {_md_cell(p)}" for p in pace)]
    lines += [
        "",
        "## Extraction audit",
        "",
        "| Target | Task | n | unparsed | errors |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for name, agg in row["tasks"].items():
            unparsed = _pct(agg["unparsed_rate"], "–")
            lines.append(
                f"| {row['target']} | {name} | {agg['n']} | {unparsed}{'%' * (unparsed != '–')} | {agg['errors']} |"
            )
    failed = [row for row in report["rows"] if row.get("failure")]
    if failed:
        lines += ["", "## Failed targets", "", "| Target | Why |", "|---|---|"]
        lines += [f"| {row['target']} | {_md_cell(row['failure'])} |" for row in failed]
    return "\n".join(lines) + "\n"


def render_published(report: dict[str, Any]) -> list[Table]:
    """Published vs measured, one table per published source with a matching checkpoint."""
    tables = []
    for pub in report.get("published") or []:
        columns = published_columns(report["tasks"], pub)
        table = Table(title=f"Published vs measured · {pub['title']}", caption=pub.get("note") or pub["source"])
        table.add_column("Target", style="bold")
        for _key, title in columns:
            table.add_column(title, justify="right")
        for row in pub["rows"]:
            table.add_row(row["target"], *(cell_text(row.get(c)) for c, _ in columns))
        tables.append(table)
    return tables


def _published_markdown(report: dict[str, Any]) -> list[str]:
    """Published vs measured, per matched checkpoint: does the published figure lie in our interval?"""
    lines: list[str] = []
    for pub in report.get("published") or []:
        columns = published_columns(report["tasks"], pub)
        head = ["Target", *(title for _, title in columns)]
        lines += ["", f"## Published vs measured: [{pub['title']}]({pub['source']})", ""]
        if pub.get("note"):
            lines += [f"Note: {pub['note']}.", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for row in pub["rows"]:
            lines.append("| " + " | ".join([row["target"], *(cell_text(row.get(c)) for c, _ in columns)]) + " |")
    return lines


def _comparisons_markdown(report: dict[str, Any]) -> list[str]:
    """Each quantized row against its reference: the paired statistics behind every Δ."""
    lines: list[str] = []
    head = [
        "Target", "vs", "Task", "paired n", "one side only (ref / quant)", "Δ pts [95 % CI]", "p (McNemar)",
        "p (Holm)", "right→wrong", "wrong→right", "changed answers", "recovery", "verdict",
    ]  # fmt: skip
    body = []
    for row in report["rows"]:
        cmp = row.get("comparison")
        if row.get("comparison_note"):
            body.append(f"| {row['target']} | – | – | " + " | ".join([""] * 9) + f" | {row['comparison_note']} |")
        if not cmp:
            continue
        items = [*cmp["tasks"].items(), *([("Average", cmp["average"])] if cmp.get("average") else [])]
        for name, p in items:
            cells = [
                row["target"], row["reference"], name, str(p["n"]),
                f"{p['only_reference']} / {p['only_quantized']}", _delta(p).rstrip(" ▼▲≈?"),
                _num(p["p_value"], "{:.3g}"), _num(p["p_holm"], "{:.3g}"),
                f"{p['right_to_wrong']} ({_pct(p['right_to_wrong'] / p['n'] if p['n'] else None)}%)",
                f"{p['wrong_to_right']} ({_pct(p['wrong_to_right'] / p['n'] if p['n'] else None)}%)",
                f"{_pct(p['changed_rate'])}%", f"{_pct(p['recovery'])}%", _md_cell(p["verdict"]),
            ]  # fmt: skip
            body.append("| " + " | ".join(cells) + " |")
    if body:
        lines += ["", "## What each quantization costs (paired, on the samples both answered)", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|", *body]
    missing = [row for row in report["rows"] if row.get("average_missing")]
    if missing:
        lines += ["", "Average left out (computed only over complete tasks):", ""]
        lines += [f"- {row['target']}: {row['average_missing']}" for row in missing]
    return lines


def _averages_markdown(report: dict[str, Any]) -> list[str]:
    """Both averages of each multiple-choice task under the names its reference uses, and C-Eval's
    categories as Qwen's cal_ceval prints them."""
    lines: list[str] = []
    for name in MULTIPLE_CHOICE_TASKS:
        aggs = [(row, row["tasks"][name]) for row in report["rows"] if row["tasks"].get(name, {}).get("n")]
        if not aggs:
            continue
        names = aggs[0][1].get("average_names") or {}
        headline = aggs[0][1].get("headline") or aggs[0][1].get("average", "micro")
        cats = list(aggs[0][1].get("categories") or {})
        head = ["Target", *(f"{k} ({names.get(k, k)})" + (" *" if k == headline else "") for k in ("micro", "macro"))]
        head += cats
        lines += ["", f"## {name} averages (* the headline)", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for row, agg in aggs:
            cells = [row["target"], _pct(agg.get("micro")), _pct(agg.get("macro"))]
            cells += [_pct((agg.get("categories") or {}).get(c)) for c in cats]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_cell(text: str) -> str:
    """One table cell: no line breaks, no column separators."""
    return " ".join(text.split()).replace("|", "\\|")


def write_report(run_dir: Path, reference: Path | None = None) -> dict[str, Any]:
    """Compute the report and write report.json, report.md and report.html into the run dir."""
    from orchestrator.report_html import render_html

    report = build_report(run_dir, reference)
    store = RunStore(run_dir)
    store.write_json("report.json", report)
    (run_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    rows = [
        [row["model"], _quant_cell(row), _backend_cell(row), *_cells(row, kld=_has_kld(report))]
        for row in report["rows"]
    ]
    page = render_html(report, rows, ["Model", "Quantization", "Backend", *_headers(report)], LEGEND)
    atomic_write(run_dir / "report.html", page.encode("utf-8"))
    return report


# ---------------------------------------------------------------------------------------------
# Two runs side by side (same checkpoints, e.g. two serving backends)
# ---------------------------------------------------------------------------------------------
Figure = Callable[[dict[str, Any]], "float | None"]
COMPARED: tuple[tuple[str, Figure, float], ...] = (
    ("Average", lambda r: r["average"], 100.0),
    *(
        (title, lambda r, name=name: (r["tasks"].get(name) or {}).get("accuracy"), 100.0)
        for name, title in TASKS.items()
    ),
    ("req/s", lambda r: r["speed"]["requests_per_s"], 1.0),
    ("out tok/s", lambda r: r["speed"]["output_tokens_per_s"], 1.0),
    ("TTFT p50 ms", lambda r: r["speed"]["ttft_p50_ms"], 1.0),
    ("TPOT p50 ms", lambda r: r["speed"]["tpot_p50_ms"], 1.0),
)


def _records_of(run_dir: Path, report: dict[str, Any], targets: Sequence[str]) -> dict[str, dict[str, Any]]:
    store = RunStore(run_dir)
    key = store_key(report["setup_version"])
    return {t: {name: store.records(t, name, key) for name in report["tasks"]} for t in targets}


TITLES_TO_TASKS = {title: name for name, title in TASKS.items()}


def compare_reports(
    a: dict[str, Any], b: dict[str, Any], a_dir: Path | None = None, b_dir: Path | None = None
) -> dict[str, Any]:
    """Rows of two runs matched by (model, quantization): each figure for A, B and B - A; with the
    run directories, each task's B - A paired on the samples both answered (same id and prompt)."""
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
    if a_dir is not None and b_dir is not None and rows:
        pairs = [(r["a"]["target"], r["b"]["target"]) for r in rows]
        shared = [n for n in a["tasks"] if n in b["tasks"]]
        tasks = {n: build_task(n, None, setup=a["setup"]) for n in shared}
        recs_a = _records_of(a_dir, a, [p[0] for p in pairs])
        recs_b = _records_of(b_dir, b, [p[1] for p in pairs])
        for row, paired in zip(rows, paired_runs(pairs, recs_a, recs_b, tasks), strict=True):
            row["paired"] = paired
    return {"a": a["run_id"], "b": b["run_id"], "setups": [a["setup_version"], b["setup_version"]], "rows": rows}


def render_comparison(cmp: dict[str, Any]) -> Table:
    """Rich table: per checkpoint, each figure as A | B | delta."""
    table = Table(title=f"{cmp['a']} (A) vs {cmp['b']} (B)", caption=f"paired Δ: B - A on the same samples. {LEGEND}")
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
            cell = f"{_num(f['a'], '{:.1f}') or '-'} / {_num(f['b'], '{:.1f}') or '-'}{delta}"
            paired = (row.get("paired") or {}).get(TITLES_TO_TASKS.get(name, ""))
            if paired and paired.get("delta") is not None:
                cell += f"\npaired Δ {_delta(paired)} (n={paired['n']})"
            cells.append(cell)
        table.add_row(row["model"], row["quantization"], f"{row['a']['backend']} / {row['b']['backend']}", *cells)
    return table


# ---------------------------------------------------------------------------------------------
# Load tests: latency tables, throughput-vs-latency curves, HTML/PNG/JSON/CSV
# ---------------------------------------------------------------------------------------------
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "queue_ms", "post_ms")


def build_load_report(run_dir: Path) -> dict[str, Any]:
    """Every figure of a load-test run, from its records."""
    from orchestrator.loadtest import LoadProfile, level_metrics

    store = RunStore(run_dir)
    meta = store.require_meta()
    profile = LoadProfile.from_dict(meta["load_profile"])
    targets: dict[str, list[dict[str, Any]]] = {}
    for t in meta["manifest"]["targets"]:
        levels = []
        for records in store.load_levels(t["name"]):
            metrics = level_metrics(records, profile)
            metrics.update(mode=records[0].mode, level=records[0].level)
            metrics["saturation"] = _level_saturation(meta, t["name"], records, metrics)
            levels.append(metrics)
        levels.sort(key=lambda m: (m["mode"] != "concurrency", m["level"]))
        targets[t["name"]] = levels
    return {
        "run_id": meta.get("run_id", run_dir.name),
        "profile": meta["load_profile"],
        "notes": meta.get("load_notes", {}),
        "client": meta.get("client", {}),
        "roofline": meta.get("roofline", {}),
        "targets": targets,
        # Each model's checkpoints (target, quantization), for the chart that compares them.
        "models": {
            model: [(t["name"], t["quantization"]) for t in meta["manifest"]["targets"] if t["model"] == model]
            for model in dict.fromkeys(t["model"] for t in meta["manifest"]["targets"])
        },
    }


def _level_saturation(
    meta: dict[str, Any], target: str, records: Sequence[Any], metrics: dict[str, Any]
) -> dict[str, Any] | None:
    """Who set the pace of one load level (saturation.py): its metrics, the client's CPU time and
    the server's /metrics around it (run.json)."""
    if not metrics["completed"]:
        return None
    key = f"{target}/{records[0].mode}-{records[0].level:g}"
    timed = [r.timing for r in records if r.timing is not None]
    wall = max(t.wall_end for t in timed) - min(t.wall_send for t in timed) if timed else None
    scraped = meta.get("server_metrics", {}).get(key) or {}

    def p50(name: str) -> float | None:
        return (metrics.get(name) or {}).get("p50")

    return Saturation(
        client_core_share=core_share(meta.get("client", {}).get("levels", {}).get(key), wall),
        send_delay_ms=p50("queue_ms") if records[0].mode == "concurrency" else None,
        e2e_ms=p50("e2el_ms"),
        ttft_ms=p50("ttft_ms"),
        tpot_ms=p50("tpot_ms"),
        server_tpot_ms=p50("server_tpot_ms"),
        server_wait_ms=p50("server_wait_ms"),
        **server_side(meta.get("servers", {}).get(target), scraped.get("before"), scraped.get("after")),
    ).to_json()


def render_latency_table(report: dict[str, Any]) -> Table:
    """Per target and level: throughput, then p50/p90/p99 of each latency metric (ms)."""
    pcts = [f"p{q:g}" for q in report["profile"]["percentiles"]]
    table = Table(title=f"Load test {report['run_id']} ({report['profile']['mode']})")
    for col in ("Target", "Level", "req/s", "out tok/s", "ok/fail"):
        table.add_column(col, justify="right" if col != "Target" else "left")
    for metric in LATENCY_METRICS:
        table.add_column(f"{metric.removesuffix('_ms').upper()} ms\n{'/'.join(pcts)}", justify="right")
    if any(m.get("goodput") for levels in report["targets"].values() for m in levels):
        table.add_column("goodput", justify="right")
    table.add_column("limit")
    for target, levels in report["targets"].items():
        for m in levels:
            cells = [
                target,
                # "1 wave": the requests outlast the level, so its rates are not a steady state.
                f"{m['mode'][:4]} {m['level']:g}" + (" (1 wave)" if m.get("one_wave") else ""),
                _num(m["request_throughput"]),
                _num(m["output_throughput"], "{:.1f}"),
                f"{m['completed']}/{m['failed']}",
            ]
            for metric in LATENCY_METRICS:
                s = m[metric]
                cells.append(" / ".join(_num(s.get(p), "{:.1f}") or "-" for p in pcts))
            if m.get("goodput"):
                g = m["goodput"]
                cells.append(f"{_pct(g['fraction'])}% ({_num(g['rate'])}/s)")
            cells.append(LIMIT_MARKS[(m.get("saturation") or {}).get("limit", "unknown")])
            table.add_row(*cells)
    table.caption = "limit: who set the pace (server, client, ? unclear); the figures behind it in load_report.json"
    return table


# How the load table marks who set a level's pace.
LIMIT_MARKS = {"server": "server", "client": "CLIENT", "unknown": "?"}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def write_load_report(run_dir: Path) -> dict[str, Any]:
    """load_report.json, load_report.csv, a PNG curve per target and load_report.html.

    Plots use matplotlib: static PNGs render offline and embed in a self-contained HTML page
    (no JavaScript bundle or CDN), which is what a report kept next to the raw data needs.
    """
    import base64
    import csv
    import html

    report = build_load_report(run_dir)
    RunStore(run_dir).write_json("load_report.json", report)
    rows = []
    for target, levels in report["targets"].items():
        for m in levels:
            flat: dict[str, Any] = {"target": target}
            _flatten("", m, flat)
            rows.append(flat)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "target", k))
    with open(run_dir / "load_report.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    images = {}
    for target, levels in report["targets"].items():
        if levels:
            png = run_dir / f"load_{target}.png"
            _plot_curve(target, levels, png)
            images[target] = png
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>Load test {html.escape(report['run_id'])}</title>",
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>",
        f"<h1>Load test {html.escape(report['run_id'])}</h1>",
        f"<p>profile: <code>{html.escape(json.dumps(report['profile']))}</code></p>",
    ]
    for target, notes in report["notes"].items():
        parts += [f"<p><b>{html.escape(target)}</b>: {html.escape(n)}</p>" for n in notes]
    for target, r in report["roofline"].items():
        parts.append(
            f"<p><b>{html.escape(target)}</b> batch-1 decode roofline (estimate): "
            f"{_num(r['achieved_tok_s'], '{:.1f}')} tok/s achieved of {_num(r['bound_tok_s'], '{:.1f}')} "
            f"bound ({_pct(r['fraction'])}%), {r['weight_bytes'] / 1e9:.2f} GB weights at "
            f"{r['bandwidth_gbs']:g} GB/s x {r['gpus']}</p>"
        )
    for target, levels in report["targets"].items():
        parts.append(f"<h2>{html.escape(target)}</h2><table><tr><th>level</th><th>req/s</th><th>out tok/s</th>")
        parts += [f"<th>{m} p50/p90/p99</th>" for m in LATENCY_METRICS]
        parts.append("</tr>")
        for m in levels:
            cells = [f"{m['mode']} {m['level']:g}", _num(m["request_throughput"]), _num(m["output_throughput"])]
            for metric in LATENCY_METRICS:
                s = m[metric]
                cells.append(" / ".join(_num(s.get(k), "{:.1f}") or "-" for k in ("p50", "p90", "p99")))
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        parts += [
            f"<p>{html.escape(m['mode'])} {m['level']:g}: {html.escape(m['saturation']['line'])}</p>"
            for m in levels
            if m.get("saturation")
        ]
        if target in images:
            data = base64.b64encode(images[target].read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(target)}' src='data:image/png;base64,{data}'>")
    for i, (model, checkpoints) in enumerate((report.get("models") or {}).items()):
        measured = [(name, quant) for name, quant in checkpoints if report["targets"].get(name)]
        if len(measured) < 2:
            continue
        png = run_dir / f"load_model_{i}.png"
        _plot_quantizations(model, [(quant, report["targets"][name]) for name, quant in measured], png)
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(model)}: its quantizations</h2>")
        parts.append(f"<img alt='{html.escape(model)}' src='data:image/png;base64,{data}'>")
    (run_dir / "load_report.html").write_text("\n".join(parts) + "\n", encoding="utf-8")
    return report


def _latency_panels(title: str, xlabel: str, path: Path, draw: Callable[[Any, str], str], width: float = 10) -> None:
    """Two panels, TTFT and E2E latency against throughput; ``draw(ax, metric)`` plots one and
    returns its y label."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(width, 4))
    for ax, metric in zip(axes, ("ttft_ms", "e2el_ms"), strict=True):
        ax.set_ylabel(draw(ax, metric))
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nan(values: list[Any]) -> list[float]:
    return [v if v is not None else float("nan") for v in values]


def _plot_quantizations(model: str, series: list[tuple[str, list[dict[str, Any]]]], path: Path) -> None:
    """Output throughput against TTFT and E2E p50, one line per checkpoint of a model, points
    labelled by level."""

    def draw(ax: Any, metric: str) -> str:
        for quant, levels in series:
            xs = [m["output_throughput"] or 0.0 for m in levels]
            ys = _nan([m[metric].get("p50") for m in levels])
            ax.plot(xs, ys, marker="o", label=quant)
            for x, y, m in zip(xs, ys, levels, strict=True):
                ax.annotate(f"{m['level']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        return f"{metric.removesuffix('_ms').upper()} p50 (ms)"

    title = f"{model}: throughput vs latency per quantization (points: level)"
    _latency_panels(title, "output tokens/s", path, draw, width=11)


def _plot_curve(target: str, levels: list[dict[str, Any]], path: Path) -> None:
    xs = [m["request_throughput"] or 0.0 for m in levels]

    def draw(ax: Any, metric: str) -> str:
        for q in ("p50", "p99"):
            ax.plot(xs, _nan([m[metric].get(q) for m in levels]), marker="o", label=q)
        return f"{metric.removesuffix('_ms').upper()} (ms)"

    _latency_panels(f"{target}: throughput vs latency", "request throughput (req/s)", path, draw)
