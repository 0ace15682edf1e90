"""Benchmarks: samples, scoring and aggregation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.setups import SETUP_VERSIONS
from orchestrator.tasks.base import DataError, Sample, Score, Task, stratified_subset
from orchestrator.tasks.ifeval import IFEvalTask
from orchestrator.tasks.multiple_choice import BENCHMARKS, MultipleChoiceTask

if TYPE_CHECKING:
    from orchestrator.manifest import Manifest

__all__ = [
    "SETUP_VERSIONS",
    "DataError",
    "IFEvalTask",
    "MultipleChoiceTask",
    "Sample",
    "Score",
    "Task",
    "build_task",
    "manifest_tasks",
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


def manifest_tasks(manifest: Manifest, data_dir: Path | None, *, every_sample: bool = False) -> list[Task]:
    """The manifest's tasks under its setup (``every_sample``: without their limits).

    ``max_tokens`` is resolved here and nowhere else: the task's own, else ``generation.max_tokens``,
    else the task's default under the setup (its class knows it).
    """
    return [
        build_task(
            name,
            data_dir,
            None if every_sample else cfg.limit,
            cfg.subjects,
            cfg.shots,
            cfg.max_tokens or manifest.generation.max_tokens,
            manifest.run.setup,
        )
        for name, cfg in manifest.tasks.items()
    ]
