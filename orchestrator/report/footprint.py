"""The report's size, memory and energy parts: the main table's cells (weights, memory, and energy
where a row has any) and the section that says, per row, how each figure was read and why a
flagged energy figure is not shown."""

from __future__ import annotations

from orchestrator.footprint import MemoryReading
from orchestrator.report import cells as c
from orchestrator.report.layout import Cell, Section, Table
from orchestrator.report.model import EnergyFigure, Report, Row

SIZE_HEADERS = ("weights GB", "memory GB")
ENERGY_HEADER = "J/token"


def has_energy(report: Report) -> bool:
    """Some row's energy was read (valid or flagged): the energy column is shown. Without NVML
    there is none, and no column of dashes."""
    return any(
        e is not None and e.joules is not None
        for r in report.rows
        if r.footprint
        for e in (r.footprint.accuracy_energy, *r.footprint.speed_energy)
    )


def has_footprint(report: Report) -> bool:
    """The run measured what its rows hold (runs made before it did have no such columns)."""
    return any(r.footprint is not None for r in report.rows)


def footprint_headers(report: Report) -> tuple[str, ...]:
    """The main table's size, memory (and energy) headers."""
    if not has_footprint(report):
        return ()
    return (*SIZE_HEADERS, *([ENERGY_HEADER] if has_energy(report) else []))


def _gb(value: int | None) -> str:
    return "–" if value is None else f"{value / 1e9:.2f}"


def _kind(row: Row) -> str:
    memory = row.footprint.memory if row.footprint else None
    return "" if memory is None or memory.main is None else ("GPU" if memory.gpu else "RSS")


def energy_text(figure: EnergyFigure | None, value: float | None, fmt: str) -> str:
    """A figure of an energy window: the value when valid, "flagged" when not, "–" when none."""
    if figure is None or value is None:
        return "–"
    return fmt.format(value) if figure.valid else "flagged"


def footprint_cells(report: Report, row: Row) -> list[Cell]:
    """A row's weights (GB, bits per weight), memory (peak GB, its kind, steady) and energy (J per
    output token at the run's concurrency, J per correct answer), each × its reference's."""
    if not has_footprint(report):
        return []
    fp = row.footprint
    ratios = row.footprint_vs_reference or {}
    weights = fp.weights if fp else None
    memory = fp.memory.main if fp and fp.memory else None
    out: list[Cell] = [
        (
            _gb(weights.bytes if weights else None) + c.ratio(ratios.get("weights_bytes")),
            *([f"{weights.bits_per_weight:.2f} bpw"] if weights and weights.bits_per_weight else []),
        ),
        (
            _gb(memory.peak_bytes if memory else None) + c.ratio(ratios.get("memory_peak_bytes")),
            *([f"{_kind(row)} peak, steady {_gb(memory.steady_bytes)}"] if memory else []),
        ),
    ]
    if has_energy(report):
        main = fp.main_energy if fp else None
        acc = fp.accuracy_energy if fp else None
        out.append(
            (
                energy_text(main, main.j_per_token if main else None, "{:.3g}") + c.ratio(ratios.get("j_per_token")),
                *([f"{energy_text(acc, acc.j_per_correct, '{:.3g}')} J/correct"] if acc else []),
            )
        )
    return out


def _reading(kind: str, m: MemoryReading | None) -> tuple[str, ...]:
    if m is None:
        return ()
    return (f"{kind}: peak {_gb(m.peak_bytes)} GB, steady {_gb(m.steady_bytes)} GB ({m.samples} readings; {m.how})",)


def _energy_line(figure: EnergyFigure | None, label: str) -> tuple[str, ...]:
    if figure is None:
        return ()
    if figure.joules is None:
        return (f"{label}: not measured ({figure.why})",)
    work = f"{figure.requests} requests, {figure.output_tokens} output tokens, {figure.seconds:.1f} s"
    if not figure.valid:
        return (f"{label}: flagged, not shown ({figure.why}); {work}",)
    parts = [f"{figure.joules:.0f} J", f"{figure.mean_watts:.0f} W mean" if figure.mean_watts else ""]
    if figure.j_per_token is not None:
        parts.append(f"{figure.j_per_token:.4g} J/token")
    if figure.j_per_correct is not None:
        parts.append(f"{figure.j_per_correct:.4g} J/correct answer, {figure.correct_per_kj:.4g} correct/kJ")
    coverage = "" if figure.coverage is None else f", samples cover {figure.coverage:.0%}"
    return (f"{label}: {', '.join(p for p in parts if p)} ({work}; {figure.source}{coverage})",)


def footprint_section(report: Report) -> list[Section]:
    """Per row: its weights, memory and energy, how each was read, and why a figure is missing
    or flagged."""
    rows = [r for r in report.rows if r.footprint is not None]
    if not rows:
        return []
    body: list[tuple[Cell, ...]] = []
    for row in rows:
        fp = row.footprint
        assert fp is not None
        w = fp.weights
        if w is not None and w.bytes:
            params = f", {w.params / 1e9:.3g} B parameters" if w.params else ""
            bpw = f", {w.bits_per_weight:.2f} bits/weight" if w.bits_per_weight else ""
            weights: Cell = (f"{_gb(w.bytes)} GB{params}{bpw}", f"from {w.source}")
        else:
            weights = (f"n/a ({w.why if w else 'not sized'})",)
        memory: Cell = ()
        if fp.memory is not None:
            memory = (*_reading("GPU", fp.memory.gpu), *_reading("host", fp.memory.host))
            memory = memory or (f"n/a ({fp.memory.why})",)
        energy: Cell = (
            *_energy_line(fp.accuracy_energy, "accuracy pass"),
            *(
                line
                for e in fp.speed_energy
                for line in _energy_line(e, f"speed phase c={e.concurrency}" if e else "speed phase")
            ),
        ) or ("not measured",)
        body.append(((row.target,), weights, memory or ("n/a",), energy, tuple(fp.notes)))
    table = Table(("Target", "Weights", "Memory in use", "Energy", "Notes"), tuple(body))
    return [
        Section(
            "Size, memory and energy",
            table=table,
            after=(
                "Memory is measured, never estimated: a managed server's process tree (RSS), its GPU memory "
                "by process id through NVML, or the GPUs a target names (gpus:, a Compose service's device_ids). "
                "Energy is each GPU's NVML energy counter read at a phase's two ends, checked by power samples; "
                "a figure whose samples do not cover its window is flagged and never shown as valid.",
            ),
        )
    ]
