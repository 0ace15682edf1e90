"""Every stored run renders its golden reports byte for byte, whatever the hash seed.

The runs and their golden reports live in ``tests/data/stored/`` (``tests/support/stored_runs.py``
wrote them); a change that alters a report is either a bug fixed, re-rendered on purpose with
``python -m tests.support.stored_runs --golden``, or a regression this test catches.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.stored_runs import GOLDEN, RUNS, without_images

STORED = sorted(p.name for p in RUNS.iterdir() if (p / "golden").is_dir())
ROOT = Path(__file__).resolve().parents[1]


def _render(run: Path, seed: int) -> dict[str, bytes]:
    """`orchestrate report` on a copy of a stored run, in a process of its own with that hash seed."""
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    cli = "from orchestrator.cli import main; main()"
    subprocess.run([sys.executable, "-c", cli, "report", str(run)], check=True, cwd=ROOT, env=env, capture_output=True)
    return {name: (run / name).read_bytes() for name in GOLDEN}


@pytest.mark.slow
@pytest.mark.parametrize("name", STORED)
def test_a_stored_run_renders_its_golden_reports_under_any_hash_seed(tmp_path: Path, name: str) -> None:
    assert STORED, "no stored run found"
    renders = []
    for seed in (0, 1, 2):
        run = tmp_path / f"seed{seed}"
        shutil.copytree(RUNS / name / "run", run)
        renders.append(_render(run, seed))
    for name_ in GOLDEN:
        assert renders[1][name_] == renders[0][name_] == renders[2][name_], f"{name_} changes with the hash seed"
        golden = (RUNS / name / "golden" / name_).read_bytes()
        fresh = without_images(renders[0][name_]) if name_.endswith(".html") else renders[0][name_]
        assert fresh == golden, f"{name}/{name_} differs from its golden copy"


def _report(tmp_path: Path, name: str) -> dict[str, object]:
    from orchestrator.report import write_report

    run = tmp_path / name
    shutil.copytree(RUNS / name / "run", run)
    return write_report(run)


def test_a_one_task_run_has_that_task_alone_and_its_average_is_that_task(tmp_path: Path) -> None:
    report: dict[str, Any] = _report(tmp_path, "one-task")
    md = (tmp_path / "one-task" / "report.md").read_text()
    head = md.splitlines()[2]
    assert "MMLU" in head and "C-Eval" not in head and "IFEval" not in head
    for row in report["rows"]:
        mmlu = row["tasks"]["mmlu"]
        assert (row["average"], row["average_interval"]) == (mmlu["accuracy"], mmlu["interval"])
        assert row["average_interval_method"] == mmlu["interval_method"]
    cmp = report["rows"][1]["comparison"]
    assert {k: cmp["average"][k] for k in ("delta", "interval", "p_holm", "verdict")} == {
        k: cmp["tasks"]["mmlu"][k] for k in ("delta", "interval", "p_holm", "verdict")
    }


def test_the_terminal_never_cuts_a_name_and_the_page_has_every_section_of_the_markdown(tmp_path: Path) -> None:
    from rich.console import Console

    from orchestrator.report import render_table

    report: dict[str, Any] = _report(tmp_path, "matrix")
    console = Console(width=110, record=True)
    console.print(render_table(report))
    assert "Qwen/Qwen2-7B-Instruct" in console.export_text()
    md = (tmp_path / "matrix" / "report.md").read_text()
    page = (tmp_path / "matrix" / "report.html").read_text()
    for heading in [line[3:] for line in md.splitlines() if line.startswith("## ")]:
        title = heading.split(": [")[0]
        assert f"<h2>{html.escape(title)}" in page, heading


@pytest.mark.parametrize("name", STORED)
def test_report_json_reads_into_the_typed_model_and_back_unchanged(name: str) -> None:
    import json

    from orchestrator.report.model import Report, Row

    data = json.loads((RUNS / name / "golden" / "report.json").read_text(encoding="utf-8"))
    report = Report.from_json(data)
    assert report.to_json() == data and list(report.to_json()) == list(data)
    assert all(isinstance(row, Row) for row in report.rows) and report.run_id == name
    for row, raw in zip(report.rows, data["rows"], strict=True):
        assert row.speed.requests_per_s == raw["speed"]["requests_per_s"]
        for task, agg in row.tasks.items():
            assert (agg.accuracy, agg.n) == (raw["tasks"][task]["accuracy"], raw["tasks"][task]["n"])
        if row.comparison is not None:
            for task, p in row.comparison.tasks.items():
                assert (p.delta, p.verdict) == (
                    raw["comparison"]["tasks"][task]["delta"],
                    raw["comparison"]["tasks"][task]["verdict"],
                )
