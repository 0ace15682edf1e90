"""Benchmarks: samples, scoring and aggregation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator.setups import SETUP_VERSIONS
from orchestrator.tasks.base import DataError, Sample, Score, Task, stratified_subset
from orchestrator.tasks.ifeval import IFEvalTask
from orchestrator.tasks.multiple_choice import BENCHMARKS, MultipleChoiceTask

__all__ = [
    "SETUP_VERSIONS",
    "DataError",
    "IFEvalTask",
    "MultipleChoiceTask",
    "Sample",
    "Score",
    "Task",
    "build_task",
    "stratified_subset",
]


def build_task(
    name: str,
    data_dir: Path | None,
    limit: int | None = None,
    subjects: Sequence[str] | None = None,
    shots: int | None = None,
    max_tokens: int | None = None,
    setup: str = "qwen",
) -> Task:
    """The task named in a manifest, under a setup."""
    if name == "ifeval":
        return IFEvalTask(data_dir, limit, max_tokens, setup)
    return MultipleChoiceTask(BENCHMARKS[name], data_dir, limit, subjects, shots, max_tokens, setup)
