"""What a checkpoint holds and draws while it serves, as run.json keeps it (``Footprint`` in a
target's ``ServerFacts``): the size of its weights, the memory its server used (peak and steady,
with how each was read) and the energy each phase took (``EnergyWindow``), and the pure reductions
from readings to those figures. The meter (meter.py) takes the readings; the report divides them
by the work the records say was done.

Energy is NVML's total-energy counter read at a window's two ends; the power samples taken between
check it. A window is valid only when the samples cover it (no gap longer than ``gap_limit``
eats more than ``1 - MIN_COVERAGE`` of it) and, over windows long enough to judge, their integral
agrees with the counter. A counter that went back (driver reload, wrap) is not used: the samples'
integral stands in when they cover the window, else the figure is flagged.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orchestrator.jsonmodel import Node

MIN_COVERAGE = 0.95  # share of a window the power samples must cover for its energy to count
# Counter and samples are compared only over windows this long: NVML's power reading is itself an
# average over up to a second, which lags a short window's edges.
AGREEMENT_MIN_S = 10.0
AGREEMENT_TOLERANCE = 0.25


def gap_limit(interval: float) -> float:
    """The longest gap between power samples that still counts as covered."""
    return max(0.5, 5 * interval)


@dataclass(kw_only=True)
class WeightsSize(Node):
    """A checkpoint's weights: bytes of its tensors, parameters, bits per weight, how they were read."""

    bytes: int | None = None
    params: int | None = None
    bits_per_weight: float | None = None
    source: str | None = None  # "GGUF tensors", "Hub safetensors metadata", "local safetensors", "matrix estimate"
    why: str | None = None  # why a figure is missing


@dataclass(kw_only=True)
class MemoryReading(Node):
    """One kind of memory a server held: its peak and steady value and how they were read."""

    peak_bytes: int | None = None
    steady_bytes: int | None = None
    how: str = ""
    samples: int = 0


@dataclass(kw_only=True)
class Memory(Node):
    """A server's memory in use: host (RSS) and GPU; ``why`` when neither could be read."""

    host: MemoryReading | None = None
    gpu: MemoryReading | None = None
    why: str | None = None

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "host": lambda d: None if d is None else MemoryReading.from_json(d),
        "gpu": lambda d: None if d is None else MemoryReading.from_json(d),
    }

    @property
    def main(self) -> MemoryReading | None:
        """The figure the table shows: GPU memory where measured, else the host's."""
        return self.gpu or self.host


@dataclass(kw_only=True)
class EnergyWindow(Node):
    """The energy a target's GPUs took over one phase (``accuracy``, ``speed-c<N>``, ``load-c<N>``)
    and the work done in it."""

    phase: str = ""
    started_at: float = 0.0  # wall clock, seconds since the epoch: overlapping windows are found by it
    seconds: float = 0.0
    gpus: list[str] = field(default_factory=list)  # UUIDs
    joules: float | None = None
    source: str | None = None  # "energy counter" or "power samples"
    power_joules: float | None = None  # the samples' integral, the counter's check
    samples: int = 0
    coverage: float | None = None
    max_gap_s: float | None = None
    valid: bool = False
    why: str | None = None  # why it is not valid
    requests: int = 0
    output_tokens: int = 0


@dataclass(kw_only=True)
class Footprint(Node):
    """A target's size, memory and energy (run.json ``servers.<target>.footprint``)."""

    weights: WeightsSize | None = None
    memory: Memory | None = None
    energy: list[EnergyWindow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "weights": lambda d: None if d is None else WeightsSize.from_json(d),
        "memory": lambda d: None if d is None else Memory.from_json(d),
        "energy": lambda d: [EnergyWindow.from_json(w) for w in d],
    }

    def windows(self, phase: str) -> list[EnergyWindow]:
        """Every window of a phase (a resumed accuracy pass has one per session)."""
        return [w for w in self.energy if w.phase == phase]


@dataclass(frozen=True)
class GpuEnergy:
    """One GPU's energy over a window, before GPUs are added up."""

    joules: float | None
    source: str | None
    power_joules: float | None
    samples: int
    coverage: float
    max_gap_s: float
    why: str | None


def gpu_energy(
    t0: float,
    t1: float,
    counter0_mj: int | None,
    counter1_mj: int | None,
    power: Sequence[tuple[float, float | None]],
    interval: float,
) -> GpuEnergy:
    """One GPU's energy over ``[t0, t1]`` (monotonic seconds): the counter's difference, checked
    by the power samples (``(t, milliwatts)``; None: a failed read, a gap) taken meanwhile."""
    inside = [(t, p) for t, p in power if t0 <= t <= t1 and p is not None]
    span = max(t1 - t0, 0.0)
    edges = [t0, *(t for t, _ in inside), t1]
    gaps = [b - a for a, b in itertools.pairwise(edges)]
    limit = gap_limit(interval)
    uncovered = sum(g for g in gaps if g > limit)
    coverage = 1.0 if span == 0 else max(0.0, 1.0 - uncovered / span)
    max_gap = max(gaps, default=0.0)
    power_j = _integral(t0, t1, inside) if inside else None
    why: str | None = None
    joules: float | None
    source: str | None
    if counter0_mj is not None and counter1_mj is not None and counter1_mj >= counter0_mj:
        joules, source = (counter1_mj - counter0_mj) / 1000.0, "energy counter"
    else:
        joules, source = power_j, "power samples" if power_j is not None else None
        if counter0_mj is not None and counter1_mj is not None:
            why = "the energy counter went back (driver reload or wrap)"
        else:
            why = "no energy counter reading"
    if coverage < MIN_COVERAGE:
        why = f"power samples cover {coverage:.0%} of the window (largest gap {max_gap:.1f} s)"
    elif source == "energy counter" and power_j is not None and span >= AGREEMENT_MIN_S and joules:
        if abs(power_j / joules - 1) > AGREEMENT_TOLERANCE:
            why = f"the energy counter ({joules:.0f} J) and the power samples ({power_j:.0f} J) disagree"
    elif source == "power samples":
        why = None  # the samples stand in for the counter, and they cover the window
    return GpuEnergy(joules, source, power_j, len(inside), coverage, max_gap, why)


def _integral(t0: float, t1: float, inside: Sequence[tuple[float, float | None]]) -> float:
    """Joules from milliwatt samples: trapezoids between them, the first and last held to the edges."""
    points = [(t, float(p or 0.0)) for t, p in inside]
    total = points[0][1] * (points[0][0] - t0) + points[-1][1] * (t1 - points[-1][0])
    for (ta, pa), (tb, pb) in itertools.pairwise(points):
        total += (pa + pb) / 2 * (tb - ta)
    return total / 1000.0


def combine(phase: str, started_at: float, seconds: float, per_gpu: Mapping[str, GpuEnergy]) -> EnergyWindow:
    """A window over several GPUs: joules added up, valid only when every GPU's is."""
    parts = list(per_gpu.values())
    whys = [f"GPU {uuid[:12]}: {e.why}" if len(parts) > 1 else e.why for uuid, e in per_gpu.items() if e.why]
    joules = _total([e.joules for e in parts])
    power = _total([e.power_joules for e in parts])
    sources = {e.source for e in parts}
    return EnergyWindow(
        phase=phase,
        started_at=round(started_at, 3),
        seconds=round(seconds, 6),
        gpus=list(per_gpu),
        joules=None if joules is None else round(joules, 3),
        source=next(iter(sources)) if len(sources) == 1 else "energy counter and power samples",
        power_joules=None if power is None else round(power, 3),
        samples=min((e.samples for e in parts), default=0),
        coverage=None if not parts else round(min(e.coverage for e in parts), 4),
        max_gap_s=None if not parts else round(max(e.max_gap_s for e in parts), 3),
        valid=bool(parts) and joules is not None and not whys,
        why="; ".join(whys) if whys else (None if parts else "no GPU"),
    )


def _total(values: Sequence[float | None]) -> float | None:
    """A sum over GPUs: None when any GPU's is missing (part of the energy is never the energy)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v or 0.0 for v in values)


def memory_reading(values: Sequence[int], how: str, high_water: int | None = None) -> MemoryReading | None:
    """Peak and steady (median) of a series of readings; ``high_water``: a peak the kernel kept
    (VmHWM), which sees what sampling between readings missed."""
    if not values:
        return None
    peak = max(values) if high_water is None else max(max(values), high_water)
    return MemoryReading(peak_bytes=peak, steady_bytes=int(statistics.median(values)), how=how, samples=len(values))


def shared_windows(windows: Mapping[str, Sequence[EnergyWindow]]) -> dict[tuple[str, int], list[str]]:
    """Windows whose GPUs another target used at the same time (targets in parallel on one GPU):
    (target, window index) -> the others. Their energy cannot be told apart."""
    out: dict[tuple[str, int], list[str]] = {}
    for name, own in windows.items():
        for i, w in enumerate(own):
            others = [
                other
                for other, theirs in windows.items()
                if other != name
                and any(
                    set(w.gpus) & set(x.gpus)
                    and x.started_at < w.started_at + w.seconds
                    and w.started_at < x.started_at + x.seconds
                    for x in theirs
                )
            ]
            if others:
                out[(name, i)] = others
    return out


def merge(old: Footprint, new: Footprint | None) -> Footprint:
    """What a later session of a run measured, on top of an earlier one's: its windows added (a
    speed level measured again replaces the old one), its memory where it read any (the peak: the
    higher of the two), the weights as last sized."""
    if new is None:
        return old
    again = {w.phase for w in new.energy if w.phase != "accuracy"}
    energy = [*(w for w in old.energy if w.phase not in again), *new.energy]
    memory = new.memory if new.memory is not None and new.memory.main is not None else old.memory
    if memory is new.memory and old.memory is not None and memory is not None:
        for kind in ("host", "gpu"):
            mine, theirs = getattr(memory, kind), getattr(old.memory, kind)
            if mine is not None and theirs is not None and mine.how == theirs.how:
                mine.peak_bytes = max(mine.peak_bytes or 0, theirs.peak_bytes or 0) or None
    notes = [*old.notes, *(n for n in new.notes if n not in old.notes)]
    return Footprint(weights=new.weights or old.weights, memory=memory, energy=energy, notes=notes)


def level_concurrency(phase: str) -> int | None:
    """The requests in flight of a level's window (``speed-c64`` -> 64), None for another phase."""
    head, _, tail = phase.rpartition("-c")
    return int(tail) if head and tail.isdigit() else None


def energy_figure(
    windows: Sequence[EnergyWindow], answered: int | None = None, correct: int | None = None
) -> dict[str, Any] | None:
    """One phase's energy over its windows (a resumed accuracy pass has several), divided by its
    work: per output token, and for the accuracy pass per answer, per correct answer and correct
    answers per kJ (``answered``/``correct``: the row's). Flagged (``valid`` False, ``why``) when
    any window is; the figures are still computed, for the record, and never shown as valid."""
    if not windows:
        return None
    joules = _total([w.joules for w in windows])
    seconds = sum(w.seconds for w in windows)
    requests = sum(w.requests for w in windows)
    tokens = sum(w.output_tokens for w in windows)
    whys = list(dict.fromkeys(w.why for w in windows if not w.valid and w.why))
    out: dict[str, Any] = {
        "phase": windows[0].phase,
        "concurrency": level_concurrency(windows[0].phase),
        "joules": None if joules is None else round(joules, 3),
        "seconds": round(seconds, 6),
        "mean_watts": None if joules is None or not seconds else round(joules / seconds, 2),
        "requests": requests,
        "output_tokens": tokens,
        "j_per_token": None if joules is None or not tokens else round(joules / tokens, 5),
        "valid": all(w.valid for w in windows) and joules is not None,
        "why": "; ".join(whys) or None,
        "source": "; ".join(dict.fromkeys(w.source for w in windows if w.source)) or None,
        "coverage": min((w.coverage for w in windows if w.coverage is not None), default=None),
        "max_gap_s": max((w.max_gap_s for w in windows if w.max_gap_s is not None), default=None),
        "gpus": sorted({g for w in windows for g in w.gpus}),
        "windows": len(windows),
    }
    if answered is not None and joules is not None and requests:
        per_answer = joules / requests
        out["j_per_answer"] = round(per_answer, 4)
        # The pass's energy per request, times the requests it takes to get one answer right.
        out["j_per_correct"] = round(per_answer * answered / correct, 4) if correct else None
        out["correct_per_kj"] = round(1000 * correct / (per_answer * answered), 3) if correct else None
    return out


def row_figures(
    footprint: Footprint | None, answered: int, correct: int, shared: Mapping[int, list[str]]
) -> dict[str, Any] | None:
    """report.json's ``footprint`` of a row: weights, memory, the accuracy pass's energy and each
    speed level's. ``shared``: window index -> targets that used its GPUs at the same time."""
    if footprint is None:
        return None
    windows = []
    for i, w in enumerate(footprint.energy):
        if i in shared:
            w = EnergyWindow.from_json(w.to_json())
            w.valid, w.why = False, f"its GPUs also served {', '.join(shared[i])} at the same time"
        windows.append(w)
    accuracy = [w for w in windows if w.phase == "accuracy"]
    levels = list(dict.fromkeys(w.phase for w in windows if w.phase != "accuracy"))
    return {
        "weights": None if footprint.weights is None else footprint.weights.to_json(),
        "memory": None if footprint.memory is None else footprint.memory.to_json(),
        "accuracy_energy": energy_figure(accuracy, answered, correct),
        "speed_energy": [energy_figure([w for w in windows if w.phase == p]) for p in levels],
        "notes": list(footprint.notes),
    }


def footprint_ratios(mine: Mapping[str, Any] | None, ref: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """Size, memory and energy as multiples of the reference row's: memory only between readings
    of the same kind (GPU with GPU, host with host), energy only between valid figures."""
    if not mine or not ref:
        return None

    def get(fp: Mapping[str, Any], *path: str) -> Any:
        value: Any = fp
        for key in path:
            value = (value or {}).get(key)
        return value

    def ratio(x: Any, y: Any) -> float | None:
        return None if x is None or not y else x / y

    def memory(fp: Mapping[str, Any]) -> tuple[str | None, Any]:
        kind = "gpu" if get(fp, "memory", "gpu") else "host" if get(fp, "memory", "host") else None
        return kind, get(fp, "memory", kind or "", "peak_bytes")

    def energy(fp: Mapping[str, Any], phase: str, key: str) -> Any:
        figure = get(fp, phase) if phase != "speed_energy" else (fp.get("speed_energy") or [None])[0]
        return (figure or {}).get(key) if (figure or {}).get("valid") else None

    (kind, peak), (ref_kind, ref_peak) = memory(mine), memory(ref)
    return {
        "weights_bytes": ratio(get(mine, "weights", "bytes"), get(ref, "weights", "bytes")),
        "memory_peak_bytes": ratio(peak, ref_peak) if kind == ref_kind else None,
        "j_per_token": ratio(energy(mine, "speed_energy", "j_per_token"), energy(ref, "speed_energy", "j_per_token")),
        "j_per_correct": ratio(
            energy(mine, "accuracy_energy", "j_per_correct"), energy(ref, "accuracy_energy", "j_per_correct")
        ),
        "correct_per_kj": ratio(
            energy(mine, "accuracy_energy", "correct_per_kj"), energy(ref, "accuracy_energy", "correct_per_kj")
        ),
    }
