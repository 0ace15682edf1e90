"""The report as typed objects: ``Report`` → ``Row`` → ``TaskAggregate``, ``SpeedSummary``,
``Comparison`` → ``PairedResult``; each with ``from_json``/``to_json`` over report.json's shape.

Every renderer reads a report through these (attributes, not string keys). A figure a node does
not declare (a task's own: MMLU's micro/macro and subjects, IFEval's levels) stays in its
``extra``; keys are written back in the order they were read, so ``Report.from_json(d).to_json()
== d`` for every stored report.json (tests/test_stored_runs.py), and a report re-rendered from
its records is byte-identical whatever the hash seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orchestrator.footprint import Memory, WeightsSize
from orchestrator.jsonmodel import Node


@dataclass(kw_only=True)
class SpeedSummary(Node):
    """A row's throughput and median latencies in the accuracy pass, from its answered requests:
    timings under the evaluation workload (``workload`` says what it asked), never the main
    table's speed columns (those are the speed phase's)."""

    requests: int = 0
    busy_seconds: float = 0.0
    requests_per_s: float | None = None
    output_tokens: int = 0
    output_tokens_per_s: float | None = None
    ttft_p50_ms: float | None = None
    tpot_p50_ms: float | None = None
    e2e_p50_ms: float | None = None
    send_delay_p50_ms: float | None = None
    server_tpot_p50_ms: float | None = None
    server_wait_p50_ms: float | None = None
    resent: int = 0  # sent again at once on a keep-alive connection the server had closed
    workload: dict[str, Any] | None = None  # what the accuracy pass asked: logprobs, concurrency, noise floor
    token_sources: list[str] = field(default_factory=list)
    token_count_agreement: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class SpeedLevel(Node):
    """One level of a row's speed phase (speedphase.py): the same workload on every row."""

    concurrency: int = 1
    completed: int = 0
    failed: int = 0
    requests_per_s: float | None = None
    output_tokens_per_s: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    e2e_p50_ms: float | None = None
    server_tpot_p50_ms: float | None = None
    decode_tokens_per_s: float | None = None
    mean_input_tokens: float | None = None
    mean_output_tokens: float | None = None
    full_length: float | None = None  # share of replies that ran the whole length asked
    workload: str | None = None  # digest of the prompts sent and the length asked
    saturation: dict[str, Any] | None = None  # who set the level's pace (saturation.assess)


@dataclass(kw_only=True)
class SpeedPhase(Node):
    """A row's controlled speed phase: its workload, its levels (the run's concurrency first, then
    batch 1), and batch-1 decode against the bandwidth bound where the run gave one."""

    prompts: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    ignore_eos: bool | None = None
    notes: list[str] = field(default_factory=list)
    levels: list[SpeedLevel] = field(default_factory=list)
    roofline: dict[str, Any] | None = None

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"levels": lambda d: [SpeedLevel.from_json(x) for x in d]}

    @property
    def main(self) -> SpeedLevel | None:
        """The level at the run's concurrency: the main table's figures."""
        return self.levels[0] if self.levels else None

    @property
    def batch1(self) -> SpeedLevel | None:
        """The batch-1 level (the roofline's)."""
        return next((lv for lv in reversed(self.levels) if lv.concurrency == 1), None)


@dataclass(kw_only=True)
class AnswerCost(Node):
    """What one task's answers cost a row in the accuracy pass (summary.answer_costs)."""

    answers: int = 0
    correct: int = 0
    mean_output_tokens: float | None = None
    p90_output_tokens: float | None = None
    cut_at_max_tokens: float = 0.0
    output_tokens_per_correct: float | None = None
    server_seconds_per_correct: float | None = None
    seconds_from: str | None = None


@dataclass(kw_only=True)
class EnergyFigure(Node):
    """One phase's energy divided by its work (footprint.energy_figure); shown only when ``valid``."""

    phase: str = ""
    concurrency: int | None = None
    joules: float | None = None
    seconds: float = 0.0
    mean_watts: float | None = None
    requests: int = 0
    output_tokens: int = 0
    j_per_token: float | None = None
    j_per_answer: float | None = None
    j_per_correct: float | None = None
    correct_per_kj: float | None = None
    valid: bool = False
    why: str | None = None
    source: str | None = None
    coverage: float | None = None
    max_gap_s: float | None = None
    gpus: list[str] = field(default_factory=list)
    windows: int = 0


def _energy(data: Any) -> EnergyFigure | None:
    return None if data is None else EnergyFigure.from_json(data)


@dataclass(kw_only=True)
class RowFootprint(Node):
    """What a row's checkpoint holds and draws: weights, memory, energy per phase."""

    weights: WeightsSize | None = None
    memory: Memory | None = None
    accuracy_energy: EnergyFigure | None = None
    speed_energy: list[EnergyFigure | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "weights": lambda d: None if d is None else WeightsSize.from_json(d),
        "memory": lambda d: None if d is None else Memory.from_json(d),
        "accuracy_energy": _energy,
        "speed_energy": lambda d: [_energy(x) for x in d],
    }

    @property
    def main_energy(self) -> EnergyFigure | None:
        """The speed phase's level at the run's concurrency (the table's J/token)."""
        return self.speed_energy[0] if self.speed_energy else None


@dataclass(kw_only=True)
class TaskAggregate(Node):
    """One task's figures for one row: the headline accuracy, its interval and method, counts;
    the task's own figures in ``extra`` (``get("micro")``, ``get("subjects")``…)."""

    accuracy: float | None = None
    headline: str | None = None
    n: int = 0
    errors: int = 0
    unparsed: int = 0
    unparsed_rate: float | None = None
    interval: list[float] | None = None
    interval_method: str | None = None
    interval_note: str | None = None
    intervals: dict[str, list[float] | None] = field(default_factory=dict)
    interval_methods: dict[str, str] = field(default_factory=dict)
    expected: int | None = None
    complete: bool = False


@dataclass(kw_only=True)
class PairedResult(Node):
    """A quantized side against its reference, on the samples both answered (stats.Paired, with
    the recovery, the noise floor's band and, per task, the divergence)."""

    n: int = 0
    only_reference: int = 0
    only_quantized: int = 0
    reference: float | None = None
    quantized: float | None = None
    delta: float | None = None
    interval: list[float] | None = None
    right_to_wrong: int = 0
    wrong_to_right: int = 0
    changed: int = 0
    p_value: float = 1.0
    mdd: float | None = None
    p_holm: float | None = None
    verdict: str = ""
    interval_method: str = ""
    interval_note: str | None = None
    flip_rate: float | None = None
    changed_rate: float | None = None
    recovery: float | None = None
    divergence: dict[str, Any] | None = None
    noise_band: list[float] | None = None
    inside_noise_floor: bool | None = None


def _paired(data: Any) -> PairedResult | None:
    return None if data is None else PairedResult.from_json(data)


@dataclass(kw_only=True)
class Comparison(Node):
    """A row against its reference: per task, the Average, and the KL divergence over all tasks."""

    tasks: dict[str, PairedResult] = field(default_factory=dict)
    average: PairedResult | None = None
    divergence: dict[str, Any] | None = None

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "tasks": lambda d: {k: PairedResult.from_json(v) for k, v in d.items()},
        "average": _paired,
    }


@dataclass(kw_only=True)
class Row(Node):
    """One (model, quantization) target: what it served, each task, the Average, its speed, who
    set its pace, and its comparison with the model's reference row."""

    target: str = ""
    failure: str | None = None
    model: str = ""
    quantization: str = ""
    noise_of: str | None = None
    weights: str | None = None
    concurrency: int | None = None
    backend: str = ""
    server_version: str | None = None
    served_model: str | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, TaskAggregate] = field(default_factory=dict)
    errors: int = 0
    speed: SpeedSummary = field(default_factory=SpeedSummary)  # the accuracy pass's (its workload's)
    saturation: dict[str, Any] | None = None
    speed_phase: SpeedPhase | None = None
    costs: dict[str, AnswerCost] = field(default_factory=dict)
    footprint: RowFootprint | None = None
    average_tasks: list[str] = field(default_factory=list)
    average: float | None = None
    average_interval: list[float] | None = None
    average_interval_method: str | None = None
    average_interval_note: str | None = None
    average_missing: str | None = None
    reference: str | None = None
    comparison: Comparison | None = None
    comparison_note: str | None = None
    speed_vs_reference: dict[str, float | None] | None = None
    costs_vs_reference: dict[str, dict[str, float | None]] | None = None
    footprint_vs_reference: dict[str, float | None] | None = None
    delta_average: float | None = None
    noise_floor: dict[str, Any] | None = None

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "tasks": lambda d: {k: TaskAggregate.from_json(v) for k, v in d.items()},
        "speed": SpeedSummary.from_json,
        "speed_phase": lambda d: None if d is None else SpeedPhase.from_json(d),
        "costs": lambda d: {k: AnswerCost.from_json(v) for k, v in d.items()},
        "footprint": lambda d: None if d is None else RowFootprint.from_json(d),
        "comparison": lambda d: None if d is None else Comparison.from_json(d),
    }


@dataclass(kw_only=True)
class Report(Node):
    """A bench run's report: its rows, the published tables set against them, and which method
    made each interval."""

    run_id: str = ""
    setup: str = ""
    setup_version: str = ""
    tasks: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)
    intervals: dict[str, Any] = field(default_factory=dict)

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"rows": lambda d: [Row.from_json(r) for r in d]}


def as_report(report: Report | Mapping[str, Any]) -> Report:
    """A report as the typed model (report.json's data is read into it)."""
    return report if isinstance(report, Report) else Report.from_json(report)
