"""Benchmarks: samples, scoring and aggregation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.registry import MULTIPLE_CHOICE_TASKS, TASKS
from orchestrator.setups import SETUP_VERSIONS
from orchestrator.tasks.base import DataError, Job, Sample, Score, Task, stratified_subset
from orchestrator.tasks.ifeval import IFEvalTask
from orchestrator.tasks.multiple_choice import BENCHMARKS, MultipleChoiceTask

if TYPE_CHECKING:
    from orchestrator.manifest import Manifest

__all__ = [
    "SETUP_VERSIONS",
    "TASK_BUILDERS",
    "DataError",
    "IFEvalTask",
    "Job",
    "MultipleChoiceTask",
    "Sample",
    "Score",
    "Task",
    "TaskOptions",
    "build_task",
    "manifest_tasks",
    "stratified_subset",
]


@dataclass(frozen=True)
class TaskOptions:
    """What a manifest (or a report) may set of a task."""

    data_dir: Path | None
    limit: int | None = None
    subjects: Sequence[str] | None = None
    shots: int | None = None
    max_tokens: int | None = None
    setup: str = "qwen"


def _multiple_choice(name: str) -> Callable[[TaskOptions], Task]:
    def build(o: TaskOptions) -> Task:
        return MultipleChoiceTask(BENCHMARKS[name], o.data_dir, o.limit, o.subjects, o.shots, o.max_tokens, o.setup)

    return build


# Task name -> how it is built. A multiple-choice benchmark is a `Benchmark` entry (its data, loader
# and a recipe per setup) and its name in registry.TASKS / MULTIPLE_CHOICE_TASKS; any other task,
# a class satisfying `Task` and its builder here.
TASK_BUILDERS: dict[str, Callable[[TaskOptions], Task]] = {
    **{name: _multiple_choice(name) for name in BENCHMARKS},
    "ifeval": lambda o: IFEvalTask(o.data_dir, o.limit, o.max_tokens, o.setup),
}
assert list(TASK_BUILDERS) == [n for n in TASKS if n in TASK_BUILDERS] and set(TASK_BUILDERS) == set(TASKS), (
    "every task named in registry.TASKS has a builder, and no other"
)
assert set(MULTIPLE_CHOICE_TASKS) == set(BENCHMARKS), "the multiple-choice tasks are the Benchmark entries"


def build_task(
    name: str,
    data_dir: Path | None,
    limit: int | None = None,
    subjects: Sequence[str] | None = None,
    shots: int | None = None,
    max_tokens: int | None = None,
    setup: str = "qwen",
) -> Task:
    """The task named in a manifest, under a setup (an unknown name: one line, exit 2)."""
    builder = TASK_BUILDERS.get(name)
    if builder is None:
        raise DataError(f"no task named {name!r} (known: {', '.join(TASK_BUILDERS)})")
    return builder(TaskOptions(data_dir, limit, subjects, shots, max_tokens, setup))


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
