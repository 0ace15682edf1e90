"""Reports from the store only: a bench run's tables (accuracy and speed side by side, per model
and quantization, in the layout of the Qwen docs' "Performance of Quantized Models"), two runs
side by side, and load tests.

``build.py`` computes report.json's data; ``document.py`` turns it into one document model that
``terminal.py``, ``markdown.py`` and ``html.py`` draw (``figures.py`` the page's figures);
``compare.py`` two runs; ``load.py`` load tests.
"""

from __future__ import annotations

from orchestrator.report.build import build_report, interval_methods, render_markdown, write_report
from orchestrator.report.compare import compare_reports, render_comparison
from orchestrator.report.load import build_load_report, render_latency_table, write_load_report
from orchestrator.report.terminal import render_published, render_table

__all__ = [
    "build_load_report",
    "build_report",
    "compare_reports",
    "interval_methods",
    "render_comparison",
    "render_latency_table",
    "render_markdown",
    "render_published",
    "render_table",
    "write_load_report",
    "write_report",
]
