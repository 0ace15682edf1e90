"""Benchmarks: samples, scoring and aggregation."""

from orchestrator.tasks.base import Sample, Score, Task, stratified_subset
from orchestrator.tasks.multiple_choice import DataError, MultipleChoiceTask, build_task

__all__ = ["DataError", "MultipleChoiceTask", "Sample", "Score", "Task", "build_task", "stratified_subset"]
