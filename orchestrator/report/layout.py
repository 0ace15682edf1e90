"""The document model's parts: a ``Document`` of ``Section``s (paragraphs, a ``Table`` of
multi-line cells, a list, a page-only figure), which the renderers draw (``terminal.py``,
``markdown.py``, ``html.py``) and the report's builders fill (``document.py``, ``speed.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.report.model import Report

Cell = tuple[str, ...]  # a cell's lines


@dataclass(frozen=True)
class Table:
    """Headers and rows of cells; ``groups``: each row's group (the model) where rows are grouped."""

    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """A heading (none for the lead section), paragraphs, a table, paragraphs after it, a list;
    ``source``: (text, address) of what the heading names; ``figure``: a page-only figure."""

    title: str = ""
    before: tuple[str, ...] = ()
    table: Table | None = None
    after: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    source: tuple[str, str] | None = None
    figure: Callable[[Report], str | None] | None = None
    page_only: bool = False  # report.html's alone (report.json has its figures too)


@dataclass(frozen=True)
class Document:
    """A run's report as its renderers draw it."""

    title: str
    sections: tuple[Section, ...]
