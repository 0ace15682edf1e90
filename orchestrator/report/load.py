"""Load tests' reports: per target and level, throughput and latency percentiles (the ones the
profile asked for), who set the pace, and throughput-vs-latency curves; JSON, CSV, PNG and one
self-contained HTML page, all written through the store."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator.footprint import Memory, WeightsSize, energy_figure
from orchestrator.metrics import LATENCIES
from orchestrator.report import cells as c
from orchestrator.run_meta import RunMeta
from orchestrator.saturation import assess, core_share
from orchestrator.store import RunStore


def table_latencies() -> tuple[str, ...]:
    """The latency table's metrics: every load-level latency of metrics.LATENCIES but the server's own."""
    return tuple(name for name, m in LATENCIES.items() if m.load and not m.server)


def build_load_report(run_dir: Path) -> dict[str, Any]:
    """Every figure of a load-test run, from its records."""
    from orchestrator.loadtest import LoadProfile, level_metrics

    store = RunStore(run_dir)
    meta = store.require_meta()
    profile = LoadProfile.from_dict(meta.load_profile or {})
    targets: dict[str, list[dict[str, Any]]] = {}
    footprints: dict[str, dict[str, Any]] = {}
    for t in meta.manifest["targets"]:
        levels = []
        fp = meta.server(t["name"]).footprint
        for records in store.load_levels(t["name"]):
            metrics = level_metrics(records, profile)
            metrics.update(mode=records[0].mode, level=records[0].level)
            metrics["saturation"] = _level_saturation(meta, t["name"], records, metrics)
            # The level's energy window (named after its records file), divided by its output tokens.
            phase = f"load-{records[0].mode}-{records[0].level:g}"
            metrics["energy"] = energy_figure(fp.windows(phase)) if fp is not None else None
            levels.append(metrics)
        levels.sort(key=lambda m: (m["mode"] != "concurrency", m["level"]))
        targets[t["name"]] = levels
        if fp is not None:
            footprints[t["name"]] = {
                "weights": None if fp.weights is None else fp.weights.to_json(),
                "memory": None if fp.memory is None else fp.memory.to_json(),
                "notes": fp.notes,
            }
    return {
        "run_id": meta.run_id or run_dir.name,
        "profile": meta.load_profile,
        "notes": meta.load_notes,
        "client": meta.client,
        "roofline": meta.roofline,
        "targets": targets,
        "footprints": footprints,
        # Each model's checkpoints (target, quantization), for the chart that compares them.
        "models": {
            model: [(t["name"], t["quantization"]) for t in meta.manifest["targets"] if t["model"] == model]
            for model in dict.fromkeys(t["model"] for t in meta.manifest["targets"])
        },
    }


def _level_saturation(
    meta: RunMeta, target: str, records: Sequence[Any], metrics: dict[str, Any]
) -> dict[str, Any] | None:
    """Who set the pace of one load level (saturation.py): its metrics, the client's CPU time and
    the server's /metrics around it (run.json)."""
    if not metrics["completed"]:
        return None
    key = f"{target}/{records[0].mode}-{records[0].level:g}"
    timed = [r.timing for r in records if r.timing is not None]
    wall = max(t.wall_end for t in timed) - min(t.wall_send for t in timed) if timed else None
    scraped = meta.server_metrics.get(key) or {}

    return assess(
        lambda name: (metrics.get(name) or {}).get("p50"),
        core_share(meta.client.get("levels", {}).get(key), wall),
        (metrics.get("queue_ms") or {}).get("p50") if records[0].mode == "concurrency" else None,
        meta.server(target).to_json(),
        scraped.get("before"),
        scraped.get("after"),
    )


def render_latency_table(report: dict[str, Any]) -> Table:
    """Per target and level: throughput, then the profile's percentiles of each latency metric (ms)."""
    pcts = [f"p{q:g}" for q in report["profile"]["percentiles"]]
    table = Table(title=f"Load test {report['run_id']} ({report['profile']['mode']})")
    for col in ("Target", "Level", "req/s", "out tok/s", "ok/fail"):
        table.add_column(col, justify="right" if col != "Target" else "left")
    for metric in table_latencies():
        table.add_column(f"{metric.removesuffix('_ms').upper()} ms\n{'/'.join(pcts)}", justify="right")
    if any(m.get("goodput") for levels in report["targets"].values() for m in levels):
        table.add_column("goodput", justify="right")
    energy = any(
        (m.get("energy") or {}).get("joules") is not None for levels in report["targets"].values() for m in levels
    )
    if energy:
        table.add_column("J/token", justify="right")
    table.add_column("limit")
    for target, levels in report["targets"].items():
        for m in levels:
            cells = [
                target,
                # "1 wave": the requests outlast the level, so its rates are not a steady state.
                f"{m['mode'][:4]} {m['level']:g}" + (" (1 wave)" if m.get("one_wave") else ""),
                c.num(m["request_throughput"]),
                c.num(m["output_throughput"], "{:.1f}"),
                f"{m['completed']}/{m['failed']}",
            ]
            for metric in table_latencies():
                s = m[metric]
                cells.append(" / ".join(c.num(s.get(p), "{:.1f}") or "-" for p in pcts))
            if m.get("goodput"):
                g = m["goodput"]
                cells.append(f"{c.pct(g['fraction'])}% ({c.num(g['rate'])}/s)")
            if energy:
                cells.append(level_energy(m.get("energy")))
            cells.append(LIMIT_MARKS[(m.get("saturation") or {}).get("limit", "unknown")])
            table.add_row(*cells)
    table.caption = "limit: who set the pace (server, client, ? unclear); the figures behind it in load_report.json"
    return table


def level_energy(figure: dict[str, Any] | None) -> str:
    """A level's joules per output token: "flagged" when its window is not valid."""
    if not figure or figure.get("j_per_token") is None:
        return "-"
    return f"{figure['j_per_token']:.3g}" if figure.get("valid") else "flagged"


def footprint_lines(report: dict[str, Any]) -> list[str]:
    """Per target: its weights and the memory its server used, and each flagged level's reason."""
    out = []
    for target, fp in (report.get("footprints") or {}).items():
        w, mem = WeightsSize.from_json(fp["weights"] or {}), Memory.from_json(fp["memory"] or {})
        weights = f"{w.bytes / 1e9:.2f} GB weights" if w.bytes else f"weights n/a ({w.why})"
        if w.bits_per_weight:
            weights += f" ({w.bits_per_weight:.2f} bits/weight, {w.source})"
        m = mem.main
        memory = (
            f"memory peak {(m.peak_bytes or 0) / 1e9:.2f} GB, steady {(m.steady_bytes or 0) / 1e9:.2f} GB ({m.how})"
            if m is not None
            else f"memory n/a ({mem.why})"
        )
        out.append(f"{target}: {weights}; {memory}")
        for m2 in report["targets"].get(target, []):
            e = m2.get("energy")
            if e and e.get("joules") is not None and not e.get("valid"):
                out.append(f"{target} {m2['mode']} {m2['level']:g}: energy flagged ({e.get('why')})")
    return out


# How the load table marks who set a level's pace.
LIMIT_MARKS = {"server": "server", "client": "CLIENT", "unknown": "?"}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def write_load_report(run_dir: Path) -> dict[str, Any]:
    """load_report.json, load_report.csv, a PNG curve per target (and per model's quantizations)
    and load_report.html, each written through the store.

    Plots use matplotlib (figures.py): static PNGs render offline and embed in a self-contained
    HTML page (no JavaScript bundle or CDN), which is what a report kept next to the raw data needs.
    """
    import csv
    import io

    from orchestrator.report.figures import img
    from orchestrator.report.html import page

    esc = html.escape
    store = RunStore(run_dir)
    report = build_load_report(run_dir)
    store.write_json("load_report.json", report)
    rows = []
    for target, levels in report["targets"].items():
        for m in levels:
            flat: dict[str, Any] = {"target": target}
            _flatten("", m, flat)
            rows.append(flat)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "target", k))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    store.write_text("load_report.csv", buf.getvalue())
    pcts = [f"p{q:g}" for q in report["profile"]["percentiles"]]
    body = [f"<p>profile: <code>{esc(json.dumps(report['profile']))}</code></p>"]
    for target, notes in report["notes"].items():
        body += [f"<p><b>{esc(target)}</b>: {esc(n)}</p>" for n in notes]
    body += [f"<p>{esc(line)}</p>" for line in footprint_lines(report)]
    for target, r in report["roofline"].items():
        body.append(
            f"<p><b>{esc(target)}</b> batch-1 decode roofline (estimate): "
            f"{c.num(r['achieved_tok_s'], '{:.1f}')} tok/s achieved of {c.num(r['bound_tok_s'], '{:.1f}')} "
            f"bound ({c.pct(r['fraction'])}%), {r['weight_bytes'] / 1e9:.2f} GB weights at "
            f"{r['bandwidth_gbs']:g} GB/s x {r['gpus']}</p>"
        )
    for target, levels in report["targets"].items():
        body.append(f"<h2>{esc(target)}</h2><table><tr><th>level</th><th>req/s</th><th>out tok/s</th><th>J/token</th>")
        body += [f"<th>{m} {'/'.join(pcts)}</th>" for m in table_latencies()]
        body.append("</tr>")
        for m in levels:
            cells = [
                f"{m['mode']} {m['level']:g}",
                c.num(m["request_throughput"]),
                c.num(m["output_throughput"]),
                level_energy(m.get("energy")),
            ]
            for metric in table_latencies():
                s = m[metric]
                cells.append(" / ".join(c.num(s.get(k), "{:.1f}") or "-" for k in pcts))
            body.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>")
        body.append("</table>")
        body += [
            f"<p>{esc(m['mode'])} {m['level']:g}: {esc(m['saturation']['line'])}</p>"
            for m in levels
            if m.get("saturation")
        ]
        if levels:
            data = _plot_curve(target, levels, pcts[-1])
            store.write_bytes(f"load_{target}.png", data)
            body.append(img(data, target))
    for i, (model, checkpoints) in enumerate((report.get("models") or {}).items()):
        measured = [(name, quant) for name, quant in checkpoints if report["targets"].get(name)]
        if len(measured) < 2:
            continue
        data = _plot_quantizations(model, [(quant, report["targets"][name]) for name, quant in measured])
        store.write_bytes(f"load_model_{i}.png", data)
        body += [f"<h2>{esc(model)}: its quantizations</h2>", img(data, model)]
    store.write_text("load_report.html", page(f"Load test {report['run_id']}", body))
    return report


def _latency_panels(title: str, xlabel: str, draw: Callable[[Any, str], str], width: float = 10) -> bytes:
    """Two panels, TTFT and E2E latency against throughput; ``draw(ax, metric)`` plots one and
    returns its y label."""
    from orchestrator.report.figures import png_bytes, pyplot

    fig, axes = pyplot().subplots(1, 2, figsize=(width, 4))
    for ax, metric in zip(axes, ("ttft_ms", "e2el_ms"), strict=True):
        ax.set_ylabel(draw(ax, metric))
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return png_bytes(fig, dpi=100)


def _nan(values: list[Any]) -> list[float]:
    return [v if v is not None else float("nan") for v in values]


def _plot_quantizations(model: str, series: list[tuple[str, list[dict[str, Any]]]]) -> bytes:
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
    return _latency_panels(title, "output tokens/s", draw, width=11)


def _plot_curve(target: str, levels: list[dict[str, Any]], top: str) -> bytes:
    """Request throughput against the median and the highest percentile asked, per level."""
    xs = [m["request_throughput"] or 0.0 for m in levels]

    def draw(ax: Any, metric: str) -> str:
        for q in dict.fromkeys(("p50", top)):
            ax.plot(xs, _nan([m[metric].get(q) for m in levels]), marker="o", label=q)
        return f"{metric.removesuffix('_ms').upper()} (ms)"

    return _latency_panels(f"{target}: throughput vs latency", "request throughput (req/s)", draw)
