"""The terminal's tables: the document model's tables (document.py) drawn by rich."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table as RichTable

from orchestrator.report import document
from orchestrator.report.layout import Table
from orchestrator.report.model import Report, as_report


def rich_table(
    table: Table, title: str | None = None, caption: str | None = None, first_bold: bool = False
) -> RichTable:
    """A table as rich draws it: text columns never cut (a long name folds onto a second line
    instead of losing its end), numbers right-aligned; grouped rows in sections, the group's
    name only on its first row."""
    out = RichTable(title=title, caption=caption, show_lines=False)
    for i, head in enumerate(table.headers):
        width = max((len(row[i][0]) for row in table.rows if row[i]), default=0) if i == 0 else None
        out.add_column(
            head,
            style="bold" if first_bold and i == 0 else None,
            justify="left" if i < (3 if table.groups else 1) else "right",
            overflow="fold",
            min_width=min(width, 40) if width else None,
        )
    last = None
    for k, row in enumerate(table.rows):
        group = table.groups[k] if table.groups else None
        if last is not None and group != last:
            out.add_section()
        texts = ["\n".join(cell) for cell in row]
        if group is not None and group == last:
            texts[0] = ""
        out.add_row(*texts)
        last = group
    return out


def render_table(data: Report | Mapping[str, Any]) -> RichTable:
    """The main table: one section per model, one row per quantization, its caption below."""
    report = as_report(data)
    title = f"Run {report.run_id} · setup {report.setup_version}"
    return rich_table(document.main_table(report), title, "\n".join(document.caption(report)), first_bold=True)


def render_published(data: Report | Mapping[str, Any]) -> list[RichTable]:
    """Published vs measured, one table per published source with a matching checkpoint."""
    report = as_report(data)
    return [
        rich_table(table, f"Published vs measured · {pub['title']}", pub.get("note") or pub["source"], first_bold=True)
        for pub, table in document.published_tables(report)
    ]
