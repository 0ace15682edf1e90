"""report.html: one self-contained page to read a bench run (no JavaScript, no CDN).

The page holds the table (the terminal's layout), the comparisons behind every Δ, the published
figures set against the measured ones, and static matplotlib figures embedded as PNG: a forest
plot of each Δ with its interval (and the noise floor band when the run measured one), accuracy
against output tokens/s and against TTFT p50 with the Pareto front, flips per task, the
subjects each quantization moved most, and (runs that asked for logprobs) each quantization's
sorted per-sample KL divergence from its reference.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

from orchestrator import divergence
from orchestrator.published import cell_text, published_columns
from orchestrator.registry import TASKS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _png(fig: Figure) -> str:
    """The figure as an embedded <img> (PNG, base64); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='figure' src='data:image/png;base64,{data}'>"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _comparisons(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(target, task or "Average", paired statistics) of every comparison in the run."""
    out = []
    for row in report["rows"]:
        cmp = row.get("comparison")
        if not cmp:
            continue
        for name, p in cmp["tasks"].items():
            out.append((row["target"], TASKS.get(name, name), p))
        if cmp.get("average"):
            out.append((row["target"], "Average", cmp["average"]))
    return out


def forest_plot(report: dict[str, Any]) -> str | None:
    """Each Δ with its 95 % interval, coloured by verdict; the noise floor as a band."""
    items = [(t, name, p) for t, name, p in _comparisons(report) if p.get("delta") is not None and p.get("interval")]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(items) + 1.2))
    colours = {"loss": "tab:red", "gain": "tab:green", "no detectable change": "tab:gray"}
    for y, (_, _, p) in enumerate(reversed(items)):
        if p.get("noise_band"):  # what serving alone changed, behind the quantization's Δ
            n_lo, n_hi = (100 * v for v in p["noise_band"])
            ax.fill_between([n_lo, n_hi], y - 0.3, y + 0.3, color="tab:blue", alpha=0.15, lw=0)
        lo, hi = (100 * v for v in p["interval"])
        colour = colours.get(p["verdict"], "tab:orange")
        ax.plot([lo, hi], [y, y], color=colour, lw=2)
        ax.plot([100 * p["delta"]], [y], "o", color=colour)
    ax.set_yticks(range(len(items)), [f"{t} · {n}" for t, n, _ in reversed(items)])
    if any(p.get("noise_band") for *_, p in items):
        ax.set_title("blue band: the noise floor (the reference against itself)", fontsize=9)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ accuracy vs reference (points), 95 % interval")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def pareto_plots(report: dict[str, Any]) -> str | None:
    """Average accuracy against output tokens/s and against TTFT p50, one point per checkpoint."""
    rows = [r for r in report["rows"] if r.get("average") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label, higher in (
        (axes[0], "output_tokens_per_s", "output tokens/s", True),
        (axes[1], "ttft_p50_ms", "TTFT p50 (ms)", False),
    ):
        points = [(r["speed"].get(key), 100 * r["average"], r["target"]) for r in rows if r["speed"].get(key)]
        for x, y, name in points:
            ax.plot(x, y, "o")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = _pareto(points, higher)
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", label="Pareto front")
            ax.legend()
        ax.set_xlabel(label)
        ax.set_ylabel("Average accuracy (%)")
        ax.grid(True, alpha=0.3)
    return _png(fig)


def _pareto(points: list[tuple[float, float, str]], higher_x: bool) -> list[tuple[float, float, str]]:
    """The points no other beats on both speed and accuracy, sorted by speed."""

    def at_least_as_fast(a: float, b: float) -> bool:
        return a >= b if higher_x else a <= b

    front = [
        p
        for p in points
        if not any(at_least_as_fast(q[0], p[0]) and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in points)
    ]
    return sorted(front, key=lambda p: p[0])


def flips_plot(report: dict[str, Any]) -> str | None:
    """Right→wrong and wrong→right per comparison (Dutta et al.: flips beyond the accuracy)."""
    items = [(t, name, p) for t, name, p in _comparisons(report) if name != "Average" and p.get("n")]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(items) + 2), 3.5))
    xs = range(len(items))
    ax.bar(xs, [100 * p["right_to_wrong"] / p["n"] for *_, p in items], label="right → wrong", color="tab:red")
    ax.bar(
        xs, [100 * p["wrong_to_right"] / p["n"] for *_, p in items], label="wrong → right", color="tab:green",
        bottom=[100 * p["right_to_wrong"] / p["n"] for *_, p in items],
    )  # fmt: skip
    ax.set_xticks(list(xs), [f"{t}\n{n}" for t, n, _ in items], fontsize=8)
    ax.set_ylabel("% of paired samples")
    ax.legend()
    return _png(fig)


def kl_plot(report: dict[str, Any]) -> str | None:
    """Per quantization, its samples' KL(ref ‖ quant) sorted: the share of samples below each value."""
    curves = [(r["target"], d) for r in report["rows"] if (d := (r.get("comparison") or {}).get("divergence"))]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for target, d in curves:
        ax.plot(range(101), d["quantiles"], label=f"{target} (mean {divergence.sig(d['kl_prefix']['mean'])})")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("% of paired samples (sorted by KL)")
    ax.set_ylabel(f"KL(ref ‖ quant), nats, top-{min(d['k'] for _, d in curves)} estimate")
    ax.legend(fontsize=8)
    return _png(fig)


def subject_plot(report: dict[str, Any], top: int = 12) -> str | None:
    """Per quantized row, the subjects whose accuracy moved most against the reference."""
    by_target = {r["target"]: r for r in report["rows"]}
    bars: list[tuple[str, float]] = []
    for row in report["rows"]:
        ref = by_target.get(row.get("reference") or "")
        if not row.get("comparison") or ref is None:
            continue
        for name, agg in row["tasks"].items():
            mine, theirs = agg.get("subjects") or {}, ref["tasks"].get(name, {}).get("subjects") or {}
            bars += [(f"{row['target']} · {s}", 100 * (mine[s] - theirs[s])) for s in mine if s in theirs]
    if not bars:
        return None
    bars = sorted(bars, key=lambda b: b[1])[:top]  # the ones quantization hurt most
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(bars) + 1.2))
    ax.barh(range(len(bars)), [b[1] for b in bars], color=["tab:red" if b[1] < 0 else "tab:green" for b in bars])
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ subject accuracy vs reference (points)")
    return _png(fig)


def _table(head: list[str], body: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{cells}</tr>{rows}</table>"


def render_html(report: dict[str, Any], table_rows: list[list[str]], headers: list[str], legend: str) -> str:
    """The whole page. ``table_rows``: the terminal table's cells (already text)."""
    esc = html.escape
    title = f"Run {report['run_id']} · setup {report['setup_version']}"
    parts = [
        "<!doctype html><html lang='en'><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "text-align:right;white-space:pre-line}th{background:#f4f4f4}table{border-collapse:collapse;"
        "margin:0.5em 0 1.5em}img{max-width:100%}.note{color:#555}</style>",
        f"<h1>{esc(title)}</h1>",
        "<h2>Accuracy and speed</h2>",
        _table(headers, [[esc(c) for c in r] for r in table_rows]),
        f"<p class='note'>Δ: paired difference against the model's reference row, 95 % interval. {esc(legend)}</p>",
    ]
    for row in report["rows"]:
        if row.get("failure"):
            parts.append(f"<p><b>{esc(row['target'])} failed</b>: {esc(row['failure'])}</p>")
        if row.get("average_missing"):
            parts.append(f"<p>{esc(row['target'])}: no Average, {esc(row['average_missing'])}</p>")
        if row.get("comparison_note"):
            parts.append(f"<p>{esc(row['target'])}: {esc(row['comparison_note'])}</p>")
    pace = [row for row in report["rows"] if row.get("saturation")]
    if pace:
        parts.append("<h2>Who set the pace</h2>")
        parts += [f"<p><b>{esc(row['target'])}</b>: {esc(row['saturation']['line'])}</p>" for row in pace]
    comparisons = _comparisons(report)
    if comparisons:
        head = ["target", "task", "paired n", "one side only", "Δ pts", "95 % CI", "p", "p (Holm)",
                "right→wrong", "wrong→right", "changed", "recovery", "verdict"]  # fmt: skip
        body = []
        for target, name, p in comparisons:
            ci = p.get("interval")
            body.append([esc(str(x)) for x in (
                target, name, p["n"], f"{p['only_reference']} / {p['only_quantized']}",
                "" if p["delta"] is None else f"{100 * p['delta']:+.1f}",
                "" if not ci else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]",
                f"{p['p_value']:.3g}", "" if p["p_holm"] is None else f"{p['p_holm']:.3g}",
                p["right_to_wrong"], p["wrong_to_right"], f"{_pct(p.get('changed_rate'))}%",
                f"{_pct(p.get('recovery'))}%", p["verdict"],
            )])  # fmt: skip
        parts += ["<h2>What each quantization costs</h2>", _table(head, body)]
    kl_rows = divergence.table_rows(report)
    if kl_rows:
        parts += [
            "<h2>Divergence from the reference (servers' top-k logprobs)</h2>",
            _table(divergence.HEADERS, [[esc(c) for c in r] for r in kl_rows]),
            f"<p class='note'>{esc(divergence.NOTE)}</p>",
        ]
    figures = [
        ("Δ against the reference", forest_plot(report)),
        ("Accuracy against speed", pareto_plots(report)),
        ("Flips", flips_plot(report)),
        ("Per-sample divergence from the reference", kl_plot(report)),
        ("Subjects moved most", subject_plot(report)),
    ]
    for caption, img in figures:
        if img is not None:
            parts += [f"<h2>{esc(caption)}</h2>", img]
    found = report.get("intervals") or {"figures": {}, "methods": {}}
    if found["figures"]:
        items = [f"<li>{esc(f)}: {esc(found['methods'].get(m, m))}</li>" for f, m in found["figures"].items()]
        parts += ["<h2>How the intervals are made</h2>", "<ul>", *items, "</ul>"]
    for pub in report.get("published") or []:
        cols = published_columns(report["tasks"], pub)
        body = [[esc(prow["target"]), *(esc(cell_text(prow.get(c))) for c, _ in cols)] for prow in pub["rows"]]
        heads = ["target", *(title for _, title in cols)]
        src = f"<a href='{esc(pub['source'])}'>{esc(pub['title'])}</a>"
        parts += [f"<h2>Published vs measured: {src}</h2>", _table(heads, body)]
        if pub.get("note"):
            parts.append(f"<p class='note'>{esc(pub['note'])}</p>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"


__all__ = ["render_html"]
