"""The report's speed and cost parts: the main table's speed cells and caption (from the controlled
speed phase only), the speed phase's own table, the accuracy pass's timings labelled as the
evaluation workload's (report.html and report.json only), and what an answer costs."""

from __future__ import annotations

from orchestrator.registry import TASKS
from orchestrator.report import cells as c
from orchestrator.report.layout import Cell, Section, Table
from orchestrator.report.model import Report, Row, SpeedLevel

SPEED_HEADERS = ("req/s", "out tok/s", "TTFT p50 ms", "TPOT p50 ms", "batch-1 tok/s")

NO_PHASE = (
    "Speed columns empty: this run has no speed phase (made before it existed, or --no-speed-phase); the accuracy "
    "pass's timings, under the evaluation workload, are in report.json and report.html."
)
EVAL_NOTE = (
    "These timings are what the evaluation asked of each server: its prompts, each row's own answer lengths, the "
    "top-k logprobs and noise-floor repeats. They are not comparable across rows or runs; the main table's speed "
    "columns come from the speed phase."
)


def _bound(level: SpeedLevel | None, row: Row) -> str | None:
    """Batch-1 decode as a share of the bandwidth bound, where the run gave one."""
    roof = row.speed_phase.roofline if row.speed_phase else None
    if level is None or not roof or roof.get("fraction") is None:
        return None
    return f"{100 * roof['fraction']:.0f}% of bound"


def speed_cells(row: Row) -> list[Cell]:
    """A row's speed cells in the main table: its speed phase at the run's concurrency, and batch-1
    decode; "–" where the row has no phase (a noise-floor row repeats its reference's server)."""
    phase = row.speed_phase
    main = phase.main if phase else None
    if main is None:
        return [("–",) for _ in SPEED_HEADERS]
    ratios = row.speed_vs_reference or {}
    b1 = phase.batch1 if phase else None
    bound = _bound(b1, row)
    return [
        (c.num(main.requests_per_s),),
        (c.num(main.output_tokens_per_s, "{:.1f}") + c.ratio(ratios.get("output_tokens_per_s")),),
        (c.num(main.ttft_p50_ms, "{:.0f}") + c.ratio(ratios.get("ttft_p50_ms")),),
        # The server's own time per token beside the client's, where it gives one (llama-server).
        (
            c.num(main.tpot_p50_ms, "{:.1f}") + c.ratio(ratios.get("tpot_p50_ms")),
            *([f"server {main.server_tpot_p50_ms:.1f}"] if main.server_tpot_p50_ms is not None else []),
        ),
        (
            c.num(b1.decode_tokens_per_s if b1 else None, "{:.1f}") + c.ratio(ratios.get("batch1_decode_tokens_per_s")),
            *([bound] if bound else []),
        ),
    ]


def _differs(report: Report) -> list[str]:
    """Rows whose speed-phase workload is not their reference's (another tokenizer, another
    configuration on resume): their speed figures are not comparable with it."""
    by_name = {row.target: row for row in report.rows}
    out = []
    for row in report.rows:
        ref = by_name.get(row.reference or "")
        mine, theirs = (r.speed_phase.main if r and r.speed_phase else None for r in (row, ref))
        if mine and theirs and mine.workload and theirs.workload and mine.workload != theirs.workload:
            out.append(row.target)
    return out


def speed_caption(report: Report) -> str:
    """What the speed columns measured, under the main table (every renderer)."""
    phases = [(row, row.speed_phase) for row in report.rows if row.speed_phase and row.speed_phase.main]
    if not phases:
        return NO_PHASE
    first = phases[0][1]
    levels = sorted({p.main.concurrency for _, p in phases if p.main})
    eos = ", end-of-sequence ignored" if all(p.ignore_eos for _, p in phases) else ""
    missing = [row.target for row in report.rows if not row.speed_phase and not row.noise_of]
    bound = ", its share of the bandwidth bound" if any(p.roofline for _, p in phases) else ""
    text = (
        f"Speed: a controlled speed phase per row, the same workload on every row ({first.prompts} prompts of "
        f"{first.input_tokens} tokens, {first.output_tokens}-token replies{eos}; greedy, no logprobs) at "
        f"{'/'.join(map(str, levels))} requests in flight; batch-1 tok/s: 1000 / TPOT p50 at one request in "
        f"flight{bound}; ×: against the reference row"
    )
    if missing:
        text += f"; no speed phase: {', '.join(missing)}"
    if differs := _differs(report):
        text += f"; workload not the reference's (not comparable): {', '.join(differs)}"
    return text + "."


def _phase_section(report: Report) -> list[Section]:
    head = ("Target", "in flight", "ok / failed", "req/s", "out tok/s", "TTFT p50 / p90 ms", "TPOT p50 / p90 ms",
            "server TPOT p50 ms", "E2E p50 ms", "decode tok/s", "tokens in / out", "full length")  # fmt: skip
    body: list[tuple[Cell, ...]] = []
    notes: list[str] = []
    for row in report.rows:
        phase = row.speed_phase
        if phase is None:
            continue
        notes += [f"{row.target}: {note}" for note in phase.notes]
        notes += [
            f"{row.target} at {lv.concurrency} in flight: {lv.saturation['line']}"
            for lv in phase.levels
            if lv.saturation
        ]
        for lv in phase.levels:
            bound = _bound(lv, row) if lv.concurrency == 1 else None
            body.append(tuple((text,) for text in (
                row.target, str(lv.concurrency), f"{lv.completed} / {lv.failed}", c.num(lv.requests_per_s),
                c.num(lv.output_tokens_per_s, "{:.1f}"),
                f"{c.num(lv.ttft_p50_ms, '{:.0f}')} / {c.num(lv.ttft_p90_ms, '{:.0f}')}",
                f"{c.num(lv.tpot_p50_ms, '{:.1f}')} / {c.num(lv.tpot_p90_ms, '{:.1f}')}",
                c.num(lv.server_tpot_p50_ms, "{:.2f}"), c.num(lv.e2e_p50_ms, "{:.0f}"),
                c.num(lv.decode_tokens_per_s, "{:.1f}") + (f" ({bound})" if bound else ""),
                f"{c.num(lv.mean_input_tokens, '{:.0f}')} / {c.num(lv.mean_output_tokens, '{:.0f}')}",
                f"{c.pct(lv.full_length)}%" if lv.full_length is not None else "",
            )))  # fmt: skip
    if not body:
        return []
    return [Section("Speed phase (the same workload on every row)", table=Table(head, tuple(body)), items=tuple(notes))]


def _eval_section(report: Report) -> list[Section]:
    head = ("Target", "logprobs k", "in flight", "noise-floor row", "requests", "req/s", "out tok/s",
            "TTFT p50 ms", "TPOT p50 ms", "server TPOT p50 ms")  # fmt: skip
    body = []
    for row in report.rows:
        sp = row.speed
        if not sp.requests:
            continue
        asked = sp.workload or {}
        body.append(tuple((text,) for text in (
            row.target, str(asked.get("logprobs", "")), str(asked.get("concurrency") or ""),
            "yes" if row.noise_of else "", str(sp.requests), c.num(sp.requests_per_s),
            c.num(sp.output_tokens_per_s, "{:.1f}"), c.num(sp.ttft_p50_ms, "{:.0f}"), c.num(sp.tpot_p50_ms, "{:.1f}"),
            c.num(sp.server_tpot_p50_ms, "{:.1f}"),
        )))  # fmt: skip
    if not body:
        return []
    title = "Speed under the evaluation workload (the accuracy pass)"
    return [Section(title, table=Table(head, tuple(body)), after=(EVAL_NOTE,), page_only=True)]


def _times(value: float | None) -> str:
    return "" if value is None else f"×{value:.2f}"


def _cost_section(report: Report) -> list[Section]:
    head = ("Target", "Task", "answers", "out tokens mean", "p90", "cut at max_tokens", "out tokens / correct",
            "server s / correct", "seconds from")  # fmt: skip
    body: list[tuple[Cell, ...]] = []
    for row in report.rows:
        changes = row.costs_vs_reference or {}
        for task, cost in row.costs.items():
            ch = changes.get(task) or {}
            cut = ch.get("cut_at_max_tokens")
            body.append(tuple(tuple(filter(None, cell)) or ("",) for cell in (
                (row.target,), (TASKS.get(task, task),), (str(cost.answers),),
                (c.num(cost.mean_output_tokens, "{:.1f}"), _times(ch.get("mean_output_tokens"))),
                (c.num(cost.p90_output_tokens, "{:.0f}"), _times(ch.get("p90_output_tokens"))),
                (f"{c.pct(cost.cut_at_max_tokens)}%", "" if cut is None else f"Δ {100 * cut:+.1f} pts"),
                (c.num(cost.output_tokens_per_correct, "{:.1f}"), _times(ch.get("output_tokens_per_correct"))),
                (c.num(cost.server_seconds_per_correct, "{:.3f}"), _times(ch.get("server_seconds_per_correct"))),
                (cost.seconds_from or "",),
            )))  # fmt: skip
    if not body:
        return []
    after = (
        "From the accuracy pass: output tokens per answer, the share of answers cut at max_tokens, and output "
        "tokens and server seconds per correct answer (the server's own account of each request where it gives "
        "one, else the client's send to last byte); × and Δ: against the model's reference row.",
    )
    return [Section("What an answer costs", table=Table(head, tuple(body)), after=after)]


def speed_sections(report: Report) -> list[Section]:
    """The speed phase, the evaluation workload's timings (the page's), and the answers' costs."""
    return [*_phase_section(report), *_eval_section(report), *_cost_section(report)]
