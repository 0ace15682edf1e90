"""report.html: the document model (document.py) as one self-contained page, with its figures
(figures.py) embedded as PNG: no JavaScript, no CDN, readable offline next to the raw data."""

from __future__ import annotations

import html

from orchestrator.report.layout import Document, Table
from orchestrator.report.model import Report

STYLE = (
    "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:right;white-space:pre-line}th{background:#f4f4f4}table{border-collapse:collapse;"
    "margin:0.5em 0 1.5em}td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555}</style>"
)


def table_html(table: Table) -> str:
    """A table; a cell's lines kept as lines (pre-line)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(chr(10).join(cell))}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def page(title: str, body: list[str]) -> str:
    """The page around its body."""
    esc = html.escape
    head = ["<!doctype html><html lang='en'><meta charset='utf-8'>", f"<title>{esc(title)}</title>", STYLE]
    return "\n".join([*head, f"<h1>{esc(title)}</h1>", *body, "</html>"]) + "\n"


def render_html_document(doc: Document, report: Report) -> str:
    """The whole page; ``report`` feeds the figures."""
    esc = html.escape
    body: list[str] = []
    for s in doc.sections:
        img = s.figure(report) if s.figure is not None else None
        if s.figure is not None and img is None:
            continue
        if s.title:
            link = f": <a href='{esc(s.source[1])}'>{esc(s.source[0])}</a>" if s.source else ""
            body.append(f"<h2>{esc(s.title)}{link}</h2>")
        body += [f"<p class='note'>{esc(p)}</p>" for p in s.before]
        if s.table is not None:
            body.append(table_html(s.table))
        body += [f"<p class='note'>{esc(p)}</p>" for p in s.after]
        if s.items:
            body += ["<ul>", *(f"<li>{esc(item)}</li>" for item in s.items), "</ul>"]
        if img is not None:
            body.append(img)
    return page(doc.title.replace("`", ""), body)
