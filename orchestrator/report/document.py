"""The report as one document model: sections of text, tables and figures, built once from
report.json's data and drawn by thin renderers (``terminal.py``, ``markdown.py``, ``html.py``).

A renderer decides only how a heading, a paragraph, a list, a table or a multi-line cell looks in
its medium; what is said, in which order and under which labels is decided here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator import divergence
from orchestrator.published import cell_text, published_columns
from orchestrator.registry import MULTIPLE_CHOICE_TASKS, TASKS
from orchestrator.report import cells as c
from orchestrator.report.footprint import footprint_cells, footprint_headers, footprint_section
from orchestrator.report.layout import Cell, Document, Section, Table
from orchestrator.report.model import PairedResult, Report, Row
from orchestrator.report.speed import SPEED_HEADERS, speed_caption, speed_cells, speed_sections

KLD_NOTE = (
    "KLD: mean KL(reference ‖ quantized) in nats over the common generated prefix, 95 % interval, and top-1 "
    "token agreement; from the servers' top-k logprobs, the smallest KL consistent with both sides' lists (a "
    "lower bound of the full KL; llama-perplexity's figures are over a text's every token, these over generated text)"
)
KLD_HEADERS = ["target", "vs", "task", "paired n", "k", "KL prefix mean [95 % CI]", "median", "p99", "KL first",
           "top-1 agree", "first top-1", "P(ref answer) ref / quant", "tokens", "KLD p99 / p90 / median",
           "RMS Δp", "disjoint top-k", "top-k mass ref / quant", "matched by"]  # fmt: skip


def divergence_rows(report: Report) -> list[list[str]]:
    """One row of text per (quantized target, task and "all") with divergence figures, for
    report.md and report.html alike."""
    out = []
    for row in report.rows:
        if row.comparison is None:
            continue
        found = [(name, p.divergence) for name, p in row.comparison.tasks.items()]
        for name, d in [*found, ("all", row.comparison.divergence)]:
            if not d:
                continue
            kl = d["kl_prefix"]
            answer = d.get("answer_probability")
            out.append([
                row.target, row.reference or "", name, str(d["n"]), str(d["k"]),
                divergence.with_interval(kl), divergence.sig(kl["median"]), divergence.sig(kl["p99"]),
                divergence.sig(d["kl_first"]["mean"]),
                "" if d["top1_agreement"] is None else f"{100 * d['top1_agreement']:.1f}%",
                f"{100 * d['first_top1_agreement']:.1f}%",
                "" if not answer else f"{answer['reference']:.3f} / {answer['quantized']:.3f} (n={answer['n']})",
                *_token_cells(d),
            ])  # fmt: skip
    return out


def _token_cells(d: Mapping[str, Any]) -> list[str]:
    """The per-token statistics (llama-perplexity's terms), the disjoint lists, the mass covered."""
    tokens = d.get("tokens") or {}
    pct = tokens.get("kld_percentiles") or {}
    mass = d.get("mass_covered") or {}
    return [
        str(tokens.get("positions", "")),
        " / ".join(divergence.sig(pct.get(q)) for q in ("99", "90", "50")) if pct else "",
        divergence.sig(tokens.get("rms_dp")),
        str(d.get("disjoint_positions", "")),
        " / ".join(f"{100 * v:.1f}%" if v is not None else "" for v in (mass.get("reference"), mass.get("quantized")))
        if mass
        else "",
        str(d.get("matched_by", "")),
    ]


def columns(report: Report) -> list[tuple[str, str]]:
    """The run's task columns (key, title), in the registry's order: a task the run did not
    measure has no column."""
    return [(key, title) for key, title in TASKS.items() if key in report.tasks]


def has_kld(report: Report) -> bool:
    """Some row was compared on logprobs (the run asked for them): the KLD column is shown."""
    return any(row.comparison is not None and row.comparison.divergence for row in report.rows)


def headers(report: Report) -> tuple[str, ...]:
    """The main table's headers."""
    return (
        "Model", "Quantization", "Backend", "Average", "Δ Avg", *(["KLD"] if has_kld(report) else []),
        *(title for _, title in columns(report)), *SPEED_HEADERS, *footprint_headers(report), "errors",
    )  # fmt: skip


def _row_cells(report: Report, row: Row) -> tuple[Cell, ...]:
    """One row of the main table: accuracy with intervals and Δ, then speed."""
    kld, tasks = has_kld(report), columns(report)
    head: list[Cell] = [(row.model,), (c.quantization(row),), (c.backend(row),)]
    if row.failure and row.average is None and not any(a.n for a in row.tasks.values()):
        # Nothing measured: say so instead of a row of blanks or zeros.
        blank = [("failed",), ("",), *([("",)] if kld else []), *[("",) for _ in tasks], *[("",)] * len(SPEED_HEADERS)]
        return (*head, *blank, *footprint_cells(report, row), (str(row.errors),))
    cmp = row.comparison
    out: list[Cell] = []
    if row.average is not None:
        ci = c.ci(row.average_interval, note=row.average_interval_note)
        out.append((f"{c.pct(row.average)} {ci}".strip(),))
    else:
        out.append(("–" if not row.average_missing else f"– ({row.average_missing})",))
    out.append((c.delta(cmp.average if cmp else None),))
    if kld:
        out.append((c.kld(cmp),))
    for key, _title in tasks:
        agg = row.tasks.get(key)
        if agg is None or agg.accuracy is None:
            out.append(("",))
            continue
        # The unparsed rate stands next to the accuracy it qualifies: a low score with many
        # unparsed replies is an extraction problem, not (only) a model problem.
        unparsed = f", {c.pct(agg.unparsed_rate)}% unparsed" if agg.unparsed else ""
        ci = c.ci(agg.interval, note=agg.interval_note)
        delta = c.delta(cmp.tasks.get(key) if cmp else None)
        out.append((f"{c.pct(agg.accuracy)} {ci} (n={agg.n}{unparsed})", *([f"Δ {delta}"] if delta else [])))
    out += [*speed_cells(row), *footprint_cells(report, row), (str(row.errors),)]
    return (*head, *out)


def main_table(report: Report) -> Table:
    """The table of the Qwen docs' layout: one row per quantization, grouped by model."""
    rows = tuple(_row_cells(report, row) for row in report.rows)
    return Table(headers(report), rows, tuple(row.model for row in report.rows))


def interval_caption(report: Report) -> str:
    """The headline figures' interval methods in one line, grouped by method."""
    by_method: dict[str, list[str]] = {}
    for figure, method in report.intervals["headline"].items():
        by_method.setdefault(method, []).append(figure)
    listed = "; ".join(f"{m} ({', '.join(figures)})" for m, figures in by_method.items())
    return f"95 % intervals: {listed}; report.md says what each method is" if listed else ""


def pace_lines(report: Report) -> list[str]:
    """One line per target that says who set its pace in the accuracy pass: the server or the client
    (the speed phase's levels have theirs in its section)."""
    return [f"{row.target} (accuracy pass): {row.saturation['line']}" for row in report.rows if row.saturation]


def resent_lines(report: Report) -> list[str]:
    """Rows some of whose requests were sent twice: at once, on a keep-alive connection the server
    had closed (not a retry after an error, and never an answer counted twice)."""
    return [
        f"{row.target}: {row.speed.resent} requests were sent again at once "
        "(the server had closed the keep-alive connection)"
        for row in report.rows
        if row.speed.resent
    ]


def caption(report: Report) -> list[str]:
    """The lines under the main table where it stands alone (the terminal)."""
    failed = [row.failure for row in report.rows if row.failure]  # each names its target
    notes = [n for n in dict.fromkeys(row.comparison_note for row in report.rows) if n]
    return [
        c.DELTA_LEGEND,
        *([KLD_NOTE] if has_kld(report) else []),
        *([line] if (line := interval_caption(report)) else []),
        *notes,
        speed_caption(report),
        *(["failed: " + " · ".join(failed)] if failed else []),
        *resent_lines(report),
        *pace_lines(report),
    ]


def _flips(p: PairedResult, count: int) -> str:
    return f"{count} ({c.pct(count / p.n if p.n else None)}%)"


def _comparisons(report: Report) -> list[Section]:
    """Each quantized row against its reference: the paired statistics behind every Δ."""
    head = (
        "Target", "vs", "Task", "paired n", "one side only (ref / quant)", "Δ pts [95 % CI]", "p (McNemar)",
        "p (Holm)", "right→wrong", "wrong→right", "changed answers", "recovery", "verdict",
    )  # fmt: skip
    body: list[tuple[Cell, ...]] = []
    for row in report.rows:
        cmp = row.comparison
        if row.comparison_note:
            body.append(((row.target,), ("–",), ("–",), *[("",)] * 9, (row.comparison_note,)))
        if cmp is None:
            continue
        items = [*cmp.tasks.items(), *([("Average", cmp.average)] if cmp.average else [])]
        for name, p in items:
            body.append(tuple((text,) for text in (
                row.target, row.reference or "", name, str(p.n),
                f"{p.only_reference} / {p.only_quantized}", c.delta(p).rstrip(" ▼▲≈?"),
                c.num(p.p_value, "{:.3g}"), c.num(p.p_holm, "{:.3g}"),
                _flips(p, p.right_to_wrong), _flips(p, p.wrong_to_right),
                f"{c.pct(p.changed_rate)}%", f"{c.pct(p.recovery)}%", p.verdict,
            )))  # fmt: skip
    sections = []
    if body:
        title = "What each quantization costs (paired, on the samples both answered)"
        sections.append(Section(title, table=Table(head, tuple(body))))
    missing = [row for row in report.rows if row.average_missing]
    if missing:
        sections.append(
            Section(
                after=("Average left out (computed only over complete tasks):",),
                items=tuple(f"{row.target}: {row.average_missing}" for row in missing),
            )
        )
    return sections


def _divergence(report: Report) -> list[Section]:
    rows = divergence_rows(report)
    if not rows:
        return []
    table = Table(tuple(KLD_HEADERS), tuple(tuple((cell,) for cell in r) for r in rows))
    return [Section("Divergence from the reference (servers' top-k logprobs)", table=table, after=(KLD_NOTE + ".",))]


def published_tables(report: Report) -> list[tuple[dict[str, Any], Table]]:
    """Published vs measured, one table per published source with a matching checkpoint."""
    out = []
    for pub in report.published:
        cols = published_columns(report.tasks, pub)
        rows = tuple(((prow["target"],), *((cell_text(prow.get(k)),) for k, _ in cols)) for prow in pub["rows"])
        out.append((pub, Table(("Target", *(title for _, title in cols)), rows)))
    return out


def _published(report: Report) -> list[Section]:
    """Does each published figure lie in our interval?"""
    return [
        Section(
            "Published vs measured",
            before=(f"Note: {pub['note']}.",) if pub.get("note") else (),
            table=table,
            source=(pub["title"], pub["source"]),
        )
        for pub, table in published_tables(report)
    ]


def _averages(report: Report) -> list[Section]:
    """Both averages of each multiple-choice task under the names its reference uses, and C-Eval's
    categories as Qwen's cal_ceval prints them."""
    sections = []
    for name in MULTIPLE_CHOICE_TASKS:
        aggs = [(row, agg) for row in report.rows if (agg := row.tasks.get(name)) is not None and agg.n]
        if not aggs:
            continue
        names = aggs[0][1].get("average_names") or {}
        headline = aggs[0][1].headline or aggs[0][1].get("average", "micro")
        cats = list(aggs[0][1].get("categories") or {})
        head = ["Target", *(f"{k} ({names.get(k, k)})" + (" *" if k == headline else "") for k in ("micro", "macro"))]
        body = tuple(
            tuple(
                (text,)
                for text in (
                    row.target,
                    c.pct(agg.get("micro")),
                    c.pct(agg.get("macro")),
                    *(c.pct((agg.get("categories") or {}).get(k)) for k in cats),
                )
            )
            for row, agg in aggs
        )
        sections.append(Section(f"{name} averages (* the headline)", table=Table((*head, *cats), body)))
    return sections


def interval_lines(report: Report) -> list[str]:
    """One line per kind of interval: the figure, its method and what the method is."""
    found = report.intervals
    return [f"{figure}: {found['methods'].get(m, m)}" for figure, m in found["figures"].items()]


def _audit(report: Report) -> Section:
    """Per target × task: answers, the unparsed rate and errors."""
    body = []
    for row in report.rows:
        for name, agg in row.tasks.items():
            unparsed = c.pct(agg.unparsed_rate, "–")
            cells = (row.target, name, str(agg.n), unparsed + "%" * (unparsed != "–"), str(agg.errors))
            body.append(tuple((text,) for text in cells))
    return Section("Extraction audit", table=Table(("Target", "Task", "n", "unparsed", "errors"), tuple(body)))


def _failed(report: Report) -> list[Section]:
    failed = [row for row in report.rows if row.failure]
    if not failed:
        return []
    body = tuple(((row.target,), (row.failure or "",)) for row in failed)
    return [Section("Failed targets", table=Table(("Target", "Why"), body))]


def build_document(report: Report) -> Document:
    """Every section of a bench run's report, in reading order."""
    from orchestrator.report import figures

    lead = Section(
        table=main_table(report),
        after=(
            c.DELTA_LEGEND,
            *([KLD_NOTE + "."] if has_kld(report) else []),
            speed_caption(report),
            *resent_lines(report),
        ),
    )
    intervals = interval_lines(report)
    pace = pace_lines(report)
    return Document(
        f"Run {report.run_id} (setup `{report.setup_version}`)",
        (
            lead,
            *_comparisons(report),
            *_divergence(report),
            *speed_sections(report),
            *footprint_section(report),
            *(Section(title, figure=draw) for title, draw in figures.FIGURES),
            *_published(report),
            *_averages(report),
            *([Section("How the intervals are made", items=tuple(intervals))] if intervals else []),
            *([Section("Who set the pace", items=tuple(pace))] if pace else []),
            _audit(report),
            *_failed(report),
        ),
    )
