"""report.md: the document model (document.py) in Markdown."""

from __future__ import annotations

from orchestrator.report.layout import Document, Table


def md_cell(text: str) -> str:
    """One table cell's line or a list item: no line breaks, no column separators."""
    return " ".join(text.split()).replace("|", "\\|")


def table_lines(table: Table) -> list[str]:
    """A Markdown table; a cell's lines joined by <br>."""
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "|".join("---" for _ in table.headers) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join("<br>".join(md_cell(line) for line in cell) for cell in row) + " |")
    return lines


def render_markdown_document(doc: Document) -> str:
    """Headings, paragraphs, tables and lists, one blank line between blocks; figures and
    page-only sections are the page's alone."""
    lines = [f"# {doc.title}"]

    def block(*text: str) -> None:
        if lines[-1] != "":
            lines.append("")
        lines.extend(text)

    for s in doc.sections:
        if s.figure is not None or s.page_only:
            continue
        if s.title:
            block(f"## {s.title}" + (f": [{s.source[0]}]({s.source[1]})" if s.source else ""))
        for paragraph in s.before:
            block(paragraph)
        if s.table is not None:
            block(*table_lines(s.table))
        for paragraph in s.after:
            block(paragraph)
        if s.items:
            block(*(f"- {md_cell(item)}" for item in s.items))
    return "\n".join(lines) + "\n"
