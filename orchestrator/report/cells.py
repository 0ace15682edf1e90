"""How each figure of a report reads as text: one formatter per kind of figure, shared by every
renderer (terminal, Markdown, HTML), so a figure reads the same wherever it is printed."""

from __future__ import annotations

from orchestrator import divergence
from orchestrator.report.model import Comparison, PairedResult, Row

# One mark per verdict, so a column of them reads at a glance (the legend is under every table).
MARKS = {"loss": "▼", "gain": "▲", "no detectable change": "≈"}
LEGEND = (
    "▼ loss · ▲ gain · ≈ no detectable change (interval within ±1 pt) · ? inconclusive (n too small) · "
    "~ inside the noise floor"
)
DELTA_LEGEND = f"Δ: paired difference against the model's reference row, 95 % interval. {LEGEND}"


def pct(value: float | None, empty: str = "") -> str:
    """A rate in points, one decimal."""
    return empty if value is None else f"{100 * value:.1f}"


def num(value: float | None, fmt: str = "{:.2f}") -> str:
    """A number, or nothing."""
    return "" if value is None else fmt.format(value)


def mark(verdict: str) -> str:
    """A verdict's mark (MARKS), "?" for inconclusive, "~" added inside the noise floor."""
    found = next(
        (m for v, m in MARKS.items() if verdict.startswith(v)), "?" if verdict.startswith("inconclusive") else ""
    )
    return found + ("~" if verdict.endswith("(inside the noise floor)") else "")


def ci(bounds: list[float] | tuple[float, float] | None, signed: bool = False, note: str | None = None) -> str:
    """An interval in points; "[no interval]" where one was due but too few samples allowed none."""
    if bounds is None:
        return "[no interval]" if note else ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100 * bounds[0])}, {fmt.format(100 * bounds[1])}]"


def delta(p: PairedResult | None) -> str:
    """A paired difference: Δ in points, its interval and the verdict's mark."""
    if p is None or p.delta is None:
        return ""
    bounds = ci(p.interval, signed=True, note=p.interval_note)
    return f"{100 * p.delta:+.1f} {bounds} {mark(p.verdict)}".strip()


def ratio(value: float | None) -> str:
    """A speed ratio against the reference row."""
    return "" if value is None else f" (×{value:.2f})"


def kld(cmp: Comparison | None) -> str:
    """Mean KL(ref ‖ quant) over the common generated prefix, all tasks, with its interval."""
    found = cmp.divergence if cmp is not None else None
    if not found:
        return ""
    return f"{divergence.with_interval(found['kl_prefix'])} top1 {100 * (found['top1_agreement'] or 0):.1f}%"


def quantization(row: Row) -> str:
    """A noise-floor row is its reference sent again: say so where the quantization stands."""
    if not row.noise_of:
        return row.quantization
    return f"{row.quantization} (repeat{', c=' + str(row.concurrency) if row.concurrency else ''})"


def backend(row: Row) -> str:
    """The backend and the server's version where it said."""
    return f"{row.backend} {row.server_version}" if row.server_version else row.backend
