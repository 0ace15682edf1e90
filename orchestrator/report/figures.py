"""The figures of report.html and of the load report: one matplotlib setup (Agg, files only),
each figure rendered in memory as PNG. For a bench run: a forest
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
from orchestrator.registry import TASKS
from orchestrator.report.model import PairedResult, Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def png_bytes(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def img(data: bytes, alt: str = "figure") -> str:
    """PNG bytes as an embedded <img>."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _png(fig: Figure) -> str:
    return img(png_bytes(fig))


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display: files only)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _comparisons(report: Report) -> list[tuple[str, str, PairedResult]]:
    """(target, task or "Average", paired statistics) of every comparison in the run."""
    out = []
    for row in report.rows:
        cmp = row.comparison
        if cmp is None:
            continue
        for name, p in cmp.tasks.items():
            out.append((row.target, TASKS.get(name, name), p))
        if cmp.average is not None:
            out.append((row.target, "Average", cmp.average))
    return out


def forest_plot(report: Report) -> str | None:
    """Each Δ with its 95 % interval, coloured by verdict; the noise floor as a band."""
    items = [(t, name, p) for t, name, p in _comparisons(report) if p.delta is not None and p.interval]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(items) + 1.2))
    colours = {"loss": "tab:red", "gain": "tab:green", "no detectable change": "tab:gray"}
    for y, (_, _, p) in enumerate(reversed(items)):
        if p.noise_band:  # what serving alone changed, behind the quantization's Δ
            n_lo, n_hi = (100 * v for v in p.noise_band)
            ax.fill_between([n_lo, n_hi], y - 0.3, y + 0.3, color="tab:blue", alpha=0.15, lw=0)
        lo, hi = (100 * v for v in p.interval or (0.0, 0.0))
        colour = colours.get(p.verdict, "tab:orange")
        ax.plot([lo, hi], [y, y], color=colour, lw=2)
        ax.plot([100 * (p.delta or 0.0)], [y], "o", color=colour)
    ax.set_yticks(range(len(items)), [f"{t} · {n}" for t, n, _ in reversed(items)])
    if any(p.noise_band for *_, p in items):
        ax.set_title("blue band: the noise floor (the reference against itself)", fontsize=9)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ accuracy vs reference (points), 95 % interval")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def pareto_plots(report: Report) -> str | None:
    """Average accuracy against output tokens/s and against TTFT p50, one point per checkpoint,
    from the speed phase (the same workload on every row)."""
    rows = [r for r in report.rows if r.average is not None and r.speed_phase is not None and r.speed_phase.main]
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label, higher in (
        (axes[0], "output_tokens_per_s", "output tokens/s", True),
        (axes[1], "ttft_p50_ms", "TTFT p50 (ms)", False),
    ):
        points = [
            (x, 100 * (r.average or 0.0), r.target)
            for r in rows
            if r.speed_phase and r.speed_phase.main and (x := r.speed_phase.main.get(key))
        ]
        _scatter(ax, points, label, higher)
    return _png(fig)


def _scatter(ax: Any, points: list[tuple[float, float, str]], label: str, higher: bool) -> None:
    """Accuracy against one figure, each point named, with the Pareto front."""
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


def _memory_points(report: Report) -> tuple[str, list[tuple[float, float, str]]]:
    """Each row's peak memory in GB (GPU where measured, else host RSS), else its weights' size."""
    rows = [r for r in report.rows if r.average is not None and r.footprint is not None]
    mem = [(r, m) for r in rows if r.footprint and r.footprint.memory and (m := r.footprint.memory.main)]
    if mem:
        kinds = {"GPU" if r.footprint and r.footprint.memory and r.footprint.memory.gpu else "host RSS" for r, _ in mem}
        points = [((m.peak_bytes or 0) / 1e9, 100 * (r.average or 0.0), r.target) for r, m in mem if m.peak_bytes]
        return f"peak memory, GB ({' / '.join(sorted(kinds))})", points
    sized = [(r, w) for r in rows if r.footprint and (w := r.footprint.weights) and w.bytes]
    return "weights, GB", [((w.bytes or 0) / 1e9, 100 * (r.average or 0.0), r.target) for r, w in sized]


def memory_plot(report: Report) -> str | None:
    """Average accuracy against memory in use (or, where none was read, the weights' size)."""
    label, points = _memory_points(report)
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    _scatter(ax, points, label, False)
    return _png(fig)


def energy_plot(report: Report) -> str | None:
    """Average accuracy against joules per output token (the speed phase; valid figures only)."""
    points = [
        (e.j_per_token, 100 * (r.average or 0.0), r.target)
        for r in report.rows
        if r.average is not None and r.footprint and (e := r.footprint.main_energy) and e.valid and e.j_per_token
    ]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    _scatter(ax, points, "joules per output token (speed phase)", False)
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


def flips_plot(report: Report) -> str | None:
    """Right→wrong and wrong→right per comparison (Dutta et al.: flips beyond the accuracy)."""
    items = [(t, name, p) for t, name, p in _comparisons(report) if name != "Average" and p.n]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(items) + 2), 3.5))
    xs = range(len(items))
    ax.bar(xs, [100 * p.right_to_wrong / p.n for *_, p in items], label="right → wrong", color="tab:red")
    ax.bar(
        xs, [100 * p.wrong_to_right / p.n for *_, p in items], label="wrong → right", color="tab:green",
        bottom=[100 * p.right_to_wrong / p.n for *_, p in items],
    )  # fmt: skip
    ax.set_xticks(list(xs), [f"{t}\n{n}" for t, n, _ in items], fontsize=8)
    ax.set_ylabel("% of paired samples")
    ax.legend()
    return _png(fig)


def kl_plot(report: Report) -> str | None:
    """Per quantization, its samples' KL(ref ‖ quant) sorted: the share of samples below each value."""
    curves = [(r.target, d) for r in report.rows if r.comparison is not None and (d := r.comparison.divergence)]
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for target, d in curves:
        ax.plot(range(101), d["quantiles"], label=f"{target} (mean {divergence.sig(d['kl_prefix']['mean'])})")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("% of paired samples (sorted by KL)")
    ax.set_ylabel(f"KL(ref ‖ quant), nats, top-{min(d['k'] for _, d in curves)} estimate")
    ax.legend(fontsize=8)
    return _png(fig)


def subject_plot(report: Report, top: int = 8) -> str | None:
    """Per task, the subjects whose accuracy quantization moved most against the reference, each
    labelled with its task and its number of samples (a subject of 3 moves in steps of 33 points)."""
    by_target = {r.target: r for r in report.rows}
    bars: list[tuple[str, float]] = []
    for name, title in TASKS.items():
        found: list[tuple[str, float]] = []
        for row in report.rows:
            ref = by_target.get(row.reference or "")
            agg = row.tasks.get(name)
            if row.comparison is None or ref is None or agg is None:
                continue
            mine, theirs = (
                agg.get("subjects") or {},
                (ref.tasks[name].get("subjects") if name in ref.tasks else None) or {},
            )
            counts = agg.get("subject_n") or {}
            found += [
                (
                    f"{row.target} · {title} · {s}" + (f" (n={counts[s]})" if s in counts else ""),
                    100 * (v - theirs[s]),
                )
                for s, v in mine.items()
                if s in theirs
            ]
        bars += sorted(found, key=lambda b: b[1])[:top]  # the ones quantization hurt most, per task
    if not bars:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(bars) + 1.2))
    ax.barh(range(len(bars)), [b[1] for b in bars], color=["tab:red" if b[1] < 0 else "tab:green" for b in bars])
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()  # in reading order: each task's subjects together, worst first
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ subject accuracy vs reference (points)")
    return _png(fig)


# The page's figures in reading order: (heading, figure from report.json's data).
FIGURES = (
    ("Δ against the reference", forest_plot),
    ("Accuracy against speed", pareto_plots),
    ("Accuracy against memory", memory_plot),
    ("Accuracy against energy", energy_plot),
    ("Flips", flips_plot),
    ("Per-sample divergence from the reference", kl_plot),
    ("Subjects moved most", subject_plot),
)
