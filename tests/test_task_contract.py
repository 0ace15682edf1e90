"""The task contract: a registry entry builds each task; a multiple-choice benchmark is one data
entry (its data, loader and a recipe per setup); an unknown task is one line, never a KeyError."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.registry import MULTIPLE_CHOICE_TASKS, TASKS
from orchestrator.tasks import TASK_BUILDERS, build_task
from orchestrator.tasks.multiple_choice import BENCHMARKS, MMLU, MultipleChoiceTask


def test_every_registered_task_is_built_by_its_entry_and_declares_its_scoring(data_dir: Path) -> None:
    assert list(TASK_BUILDERS) == list(TASKS)
    for name in TASKS:
        task = build_task(name, data_dir, limit=1, setup="qwen")
        assert task.name == name and task.metrics
        [sample] = task.samples()
        # Heavy scoring is declared, not guessed: IFEval's checkers go to the scoring process.
        job = task.score_job(sample, "A")
        assert (job is not None) == (name not in MULTIPLE_CHOICE_TASKS)
        if job is not None:
            fn, args = job
            assert fn(*args) == task.score(sample, "A")


def test_an_unknown_task_is_one_line_not_a_key_error() -> None:
    with pytest.raises(UserError, match="no task named 'gsm8k' \\(known: mmlu, ceval, ifeval\\)"):
        build_task("gsm8k", None)


def test_a_new_multiple_choice_benchmark_is_one_data_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark shaped like MMLU (CSV per subject, dev shots) with its own folder: no code path
    of MMLU's or C-Eval's is taken by name."""
    folder = tmp_path / "arc"
    for split in ("test", "dev"):
        (folder / split).mkdir(parents=True)
        rows = [f"Q{i} of {split}?,one,two,three,four,{'ABCD'[i % 4]}" for i in range(3)]
        (folder / split / f"science_{split}.csv").write_text("\n".join(rows) + "\n")
    arc = dataclasses.replace(MMLU, name="arc", local_dir="arc", default_shots=2)
    monkeypatch.setitem(BENCHMARKS, "arc", arc)
    task = MultipleChoiceTask(arc, tmp_path, setup="qwen")
    samples = task.samples()
    assert [s.id for s in samples] == ["science/0", "science/1", "science/2"]
    assert samples[1].gold == "B" and samples[1].choices == ("one", "two", "three", "four")
    assert len(samples[0].messages) == 5  # two shots, each a user and an assistant turn, then the question
    assert task.score(samples[1], "The answer is B").correct
    robust = MultipleChoiceTask(arc, tmp_path, setup="robust")
    assert robust.score(samples[1], "<think>A?</think> B").details == {"think_stripped": True}


def test_a_benchmark_without_a_recipe_for_the_setup_says_so() -> None:
    bare = dataclasses.replace(MMLU, name="bare", recipes={"qwen": MMLU.recipes["qwen"]})
    with pytest.raises(UserError, match="bare has no recipe under the robust setup"):
        MultipleChoiceTask(bare, None, setup="robust")
