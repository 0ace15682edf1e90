"""One multiple-choice task builder serving MMLU and C-Eval under each setup (orchestrator.setups).

A benchmark is data (loader, splits, defaults, averaging), not a class of its own. Prompts:

- ``qwen`` and ``robust``: MMLU as OpenCompass's mmlu_gen_a484b3 (5-shot chat turns), C-Eval as
  Qwen's evaluate_chat_ceval.py (system prompt, question and options, 0-shot);
- ``simple-evals``: its 0-shot chain-of-thought template, for both.

Extraction: ``qwen`` uses the references' own (orchestrator/tasks/references.py: OpenCompass's
first_option_postprocess for MMLU, Qwen's cascade and fuzzy fallback for C-Eval), ``simple-evals``
its answer-line regexes, ``robust`` the orchestrator's extractor (orchestrator/tasks/robust.py).
Every record names the rule that decided, or ``unparsed``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.hub import fetch
from orchestrator.records import SampleRecord
from orchestrator.setups import SETUPS
from orchestrator.stats import Outcomes
from orchestrator.tasks.base import DataError, Sample, Score, stratified_subset
from orchestrator.tasks.references import (
    QWEN_SYSTEM_PROMPT,
    SIMPLE_EVALS_TEMPLATE,
    opencompass_first_option,
    qwen_ceval,
    qwen_ceval_prompt,
    simple_evals,
)
from orchestrator.tasks.robust import THINK_BLOCK, robust_extract

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    """A question as it stands in the original data."""

    subject: str
    index: int
    question: str
    options: tuple[str, str, str, str]
    answer: str


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _read_csv(path: Path, header: bool) -> list[list[str]]:
    # Fields hold embedded newlines and some files use CRLF: a real CSV parser, newline="".
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[1:] if header else rows


def _csv_questions(folder: Path, subject: str, split: str, header: bool) -> list[Question]:
    path = folder / split / f"{subject}_{split}.csv"
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    out = []
    for i, row in enumerate(_read_csv(path, header)):
        cells = row[1:7] if header else row[0:6]  # C-Eval rows start with an id column
        if len(cells) < 6 or cells[5].strip() not in LETTERS:
            raise DataError(f"{path}: row {i + 1} is not question,A,B,C,D,answer")
        out.append(Question(subject, i, cells[0], (cells[1], cells[2], cells[3], cells[4]), cells[5].strip()))
    return out


def _csv_subjects(folder: Path, split: str) -> list[str]:
    suffix = f"_{split}.csv"
    found = sorted(p.name[: -len(suffix)] for p in (folder / split).glob(f"*{suffix}"))
    if not found:
        raise DataError(f"no {split} files in {folder / split}")
    return found


def _hub_mmlu(subject: str, split: str) -> list[Question]:
    import datasets

    rows = fetch(f"cais/mmlu ({subject}, {split})", lambda: datasets.load_dataset("cais/mmlu", subject, split=split))
    return [
        Question(subject, i, r["question"], tuple(r["choices"]), LETTERS[int(r["answer"])]) for i, r in enumerate(rows)
    ]


def _hub_ceval(subject: str, split: str) -> list[Question]:
    import datasets

    rows = fetch(
        f"ceval/ceval-exam ({subject}, {split})",
        lambda: datasets.load_dataset("ceval/ceval-exam", subject, split=split),
    )
    return [
        Question(subject, i, r["question"], (r["A"], r["B"], r["C"], r["D"]), r["answer"]) for i, r in enumerate(rows)
    ]


def _hub_subjects(repo: str) -> list[str]:
    import datasets

    names = fetch(f"the subject list of {repo}", lambda: datasets.get_dataset_config_names(repo))
    return sorted(n for n in names if n not in ("all", "auxiliary_train"))


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def opencompass_mmlu_messages(q: Question, shots: Sequence[Question]) -> tuple[tuple[str, str], ...]:
    """OpenCompass mmlu_gen_a484b3 as its chat template renders it: each of the first five dev
    examples a user turn ("Question: … Answer: ") and an assistant turn (the letter and a newline),
    then the question itself in the shorter "Q: … A: " form. No system turn: the served model's
    chat template adds its default (Qwen2: "You are a helpful assistant."), as it did there."""
    hint = (
        f"There is a single choice question about {q.subject.replace('_', ' ')}. "
        "Answer the question by replying A, B, C or D."
    )

    def options(x: Question) -> str:
        return "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, x.options, strict=True))

    turns: list[tuple[str, str]] = []
    for shot in shots:
        turns += [
            ("user", f"{hint}\nQuestion: {shot.question}{options(shot)}\nAnswer: "),
            ("assistant", f"{shot.answer}\n"),
        ]
    turns.append(("user", f"{hint}\nQ: {q.question}{options(q)}\nA: "))
    return tuple(turns)


def qwen_ceval_messages(q: Question, shots: Sequence[Question]) -> tuple[tuple[str, str], ...]:
    """Qwen's evaluate_chat_ceval.py: Qwen's default system prompt, then the question and its
    options as the user turn (0-shot; any shots come first as answered turns)."""
    turns: list[tuple[str, str]] = [("system", QWEN_SYSTEM_PROMPT)]
    for shot in shots:
        turns += [("user", qwen_ceval_prompt(shot.question, shot.options)), ("assistant", shot.answer)]
    turns.append(("user", qwen_ceval_prompt(q.question, q.options)))
    return tuple(turns)


def simple_evals_messages(q: Question) -> tuple[tuple[str, str], ...]:
    """simple-evals: 0-shot, chain of thought, final 'Answer: $LETTER' line, one user turn."""
    a, b, c, d = q.options
    return (("user", SIMPLE_EVALS_TEMPLATE.format(Question=q.question, A=a, B=b, C=c, D=d)),)


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------
Messages = tuple[tuple[str, str], ...]
Extractor = Callable[[Sample, str], tuple[str | None, str]]


@dataclass(frozen=True)
class Recipe:
    """How one setup asks one benchmark and reads its replies: the messages of a question (with
    its shots), the extractor, and the setup's own shots and max_tokens where it fixes them."""

    messages: Callable[[Question, Sequence[Question]], Messages]
    extract: Extractor
    shots: int | None = None  # None: the benchmark's default (or the manifest's)
    max_tokens: int | None = None  # None: the benchmark's default
    strips_think: bool = False  # the extractor skips a <think> block (the record says when it did)


@dataclass(frozen=True)
class Benchmark:
    """What distinguishes one multiple-choice benchmark from another: its data, where it lives,
    its defaults and averaging, and a recipe per setup (``orchestrator.setups``) it supports."""

    name: str
    local_dir: str  # folder under data_dir
    hub_repo: str
    eval_split: str
    shot_split: str
    header: bool
    default_shots: int  # under the qwen and robust setups (simple-evals is 0-shot)
    default_max_tokens: int  # under the qwen and robust setups
    headline: str  # "micro" or "macro"
    # What each reference calls the two averages (report.json and report.md name them so).
    average_names: dict[str, str]
    hub: Callable[[str, str], list[Question]]  # (subject, split) -> its questions from the Hub
    recipes: Mapping[str, Recipe]  # setup name -> how that setup asks and reads this benchmark
    # Breakdowns by group of subjects as the reference prints them (C-Eval's categories).
    categories: Callable[[dict[str, float]], dict[str, float | None]] | None = None


SIMPLE_EVALS_MAX_TOKENS = 2048


def _simple_evals(q: Question, shots: Sequence[Question]) -> Messages:
    return simple_evals_messages(q)


# simple-evals: its 0-shot chain-of-thought template and answer-line regexes, for any benchmark.
SIMPLE_EVALS = Recipe(_simple_evals, lambda s, reply: simple_evals(reply), 0, SIMPLE_EVALS_MAX_TOKENS)


def _robust(messages: Callable[[Question, Sequence[Question]], Messages]) -> Recipe:
    """The ``robust`` setup: a reference's prompts, the orchestrator's own extractor."""
    return Recipe(messages, lambda s, reply: robust_extract(reply, s.choices), strips_think=True)


MMLU = Benchmark(
    "mmlu", "mmlu", "cais/mmlu", "test", "dev", False,
    # OpenCompass's Qwen2-Instruct model configs generate up to 1024 tokens (mid-2024).
    5, 1024, "micro",
    {"micro": "Qwen cal_mmlu / OpenCompass mmlu-weighted", "macro": "OpenCompass mmlu (mean over subjects)"},
    _hub_mmlu,
    {
        "qwen": Recipe(opencompass_mmlu_messages, lambda s, reply: opencompass_first_option(reply)),
        "simple-evals": SIMPLE_EVALS,
        "robust": _robust(opencompass_mmlu_messages),
    },
)  # fmt: skip
CEVAL = Benchmark(
    "ceval", "ceval", "ceval/ceval-exam", "val", "dev", True,
    # Qwen's script decodes with the chat model's generation config (max_new_tokens 512).
    0, 512, "macro",
    {"macro": "Qwen cal_ceval AVERAGE (mean over subjects)", "micro": "mean over questions"},
    _hub_ceval,
    {
        "qwen": Recipe(qwen_ceval_messages, lambda s, reply: qwen_ceval(reply, s.question, s.choices)),
        "simple-evals": SIMPLE_EVALS,
        "robust": _robust(qwen_ceval_messages),
    },
    lambda subject_acc: ceval_categories(subject_acc),
)  # fmt: skip
BENCHMARKS = {b.name: b for b in (MMLU, CEVAL)}

# C-Eval's categories (its subject_mapping.json) and the "Hard" subjects of Qwen's cal_ceval.
CEVAL_CATEGORIES = {
    "STEM": (
        "advanced_mathematics", "college_chemistry", "college_physics", "college_programming",
        "computer_architecture", "computer_network", "discrete_mathematics", "electrical_engineer",
        "high_school_biology", "high_school_chemistry", "high_school_mathematics", "high_school_physics",
        "metrology_engineer", "middle_school_biology", "middle_school_chemistry", "middle_school_mathematics",
        "middle_school_physics", "operating_system", "probability_and_statistics", "veterinary_medicine",
    ),
    "Social Science": (
        "business_administration", "college_economics", "education_science", "high_school_geography",
        "high_school_politics", "mao_zedong_thought", "marxism", "middle_school_geography",
        "middle_school_politics", "teacher_qualification",
    ),
    "Humanities": (
        "art_studies", "chinese_language_and_literature", "high_school_chinese", "high_school_history",
        "ideological_and_moral_cultivation", "law", "legal_professional", "logic", "middle_school_history",
        "modern_chinese_history", "professional_tour_guide",
    ),
    "Other": (
        "accountant", "basic_medicine", "civil_servant", "clinical_medicine",
        "environmental_impact_assessment_engineer", "fire_engineer", "physician", "plant_protection",
        "sports_science", "tax_accountant", "urban_and_rural_planner",
    ),
}  # fmt: skip
CEVAL_HARD = (
    "advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_physics",
    "college_chemistry", "high_school_mathematics", "high_school_physics", "high_school_chemistry",
)  # fmt: skip


class MultipleChoiceTask:
    """A multiple-choice benchmark under a named setup (orchestrator.setups)."""

    def __init__(
        self,
        bench: Benchmark,
        data_dir: Path | None = None,
        limit: int | None = None,
        subjects: Sequence[str] | None = None,
        shots: int | None = None,
        max_tokens: int | None = None,
        setup: str = "qwen",
    ) -> None:
        if setup not in SETUPS:
            raise ValueError(f"unknown setup {setup!r}")
        if setup not in bench.recipes:
            raise DataError(f"{bench.name} has no recipe under the {setup} setup ({', '.join(bench.recipes)})")
        self.recipe = bench.recipes[setup]
        self.bench = bench
        self.name = bench.name
        self.metrics: tuple[str, ...] = ("micro", "macro")
        self.setup = setup
        self.data_dir = data_dir
        self.limit = limit
        self.wanted_subjects = tuple(subjects) if subjects else None
        fixed = self.recipe.shots  # a setup that fixes its shots (simple-evals: 0) overrides the manifest
        self.shots = fixed if fixed is not None else (bench.default_shots if shots is None else shots)
        self.max_tokens = max_tokens or self.recipe.max_tokens or bench.default_max_tokens

    # -- data -------------------------------------------------------------------------------
    def _folder(self) -> Path | None:
        return None if self.data_dir is None else self.data_dir / self.bench.local_dir

    def _subjects(self) -> list[str]:
        folder = self._folder()
        available = (
            _csv_subjects(folder, self.bench.eval_split) if folder is not None else _hub_subjects(self.bench.hub_repo)
        )
        if self.wanted_subjects is None:
            return available
        unknown = sorted(set(self.wanted_subjects) - set(available))
        if unknown:
            raise DataError(f"{self.name}: unknown subjects {', '.join(unknown)}")
        return sorted(self.wanted_subjects)

    def _load(self, subject: str, split: str) -> list[Question]:
        folder = self._folder()
        if folder is not None:
            return _csv_questions(folder, subject, split, self.bench.header)
        return self.bench.hub(subject, split)

    def samples(self) -> list[Sample]:
        """Deterministic samples: ids are ``subject/index`` in the original split."""
        by_subject = {s: self._load(s, self.bench.eval_split) for s in self._subjects()}
        chosen = stratified_subset(by_subject, self.limit, seed=self.name)
        out = []
        for subject in sorted(chosen):
            shots = self._load(subject, self.bench.shot_split)[: self.shots] if self.shots else []
            for q in chosen[subject]:
                messages = self.recipe.messages(q, shots)
                # The question travels with the sample: Qwen's C-Eval extraction reads it.
                out.append(
                    Sample(f"{subject}/{q.index}", subject, messages, q.answer, q.options, {"question": q.question})
                )
        return out

    # -- scoring ----------------------------------------------------------------------------
    def extract(self, sample: Sample, reply: str) -> tuple[str | None, str]:
        """The letter this setup's extractor takes from a reply, and the rule that decided."""
        return self.recipe.extract(sample, reply)

    def score(self, sample: Sample, reply: str) -> Score:
        """Extract a letter as the setup's reference does and compare with the gold answer."""
        letter, rule = self.extract(sample, reply)
        details = {"think_stripped": True} if self.recipe.strips_think and THINK_BLOCK.search(reply) else {}
        return Score(letter, rule, letter == sample.gold, details)

    def score_job(self, sample: Sample, reply: str) -> None:
        """A letter comparison: scored in the event loop's process."""
        return None

    def outcomes(self, records: Sequence[SampleRecord], metric: str | None = None) -> Outcomes:
        """Each answered sample's right/wrong in its subject, for the headline (or ``metric``:
        micro, macro) average."""
        kind = metric or self.bench.headline
        answered = [r for r in records if r.error is None]
        right = np.fromiter((bool(r.correct) for r in answered), dtype=float, count=len(answered))
        return Outcomes(kind, [r.id for r in answered], [r.subject for r in answered], right, np.ones(len(answered)))

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """Micro and macro accuracy over answered records (errors are counted, never scored),
        each under the name its reference uses; C-Eval adds Qwen's category breakdown."""
        per_subject: dict[str, list[bool]] = defaultdict(list)
        errors = unparsed = 0
        for r in records:
            if not r.answered:
                errors += 1
                continue
            per_subject[r.subject].append(bool(r.correct))
            unparsed += r.rule == "unparsed"
        n = sum(len(v) for v in per_subject.values())
        micro = sum(sum(v) for v in per_subject.values()) / n if n else None
        subject_acc = {s: sum(v) / len(v) for s, v in sorted(per_subject.items())}
        macro = sum(subject_acc.values()) / len(subject_acc) if subject_acc else None
        out: dict[str, Any] = {
            "accuracy": micro if self.bench.headline == "micro" else macro,
            "headline": self.bench.headline,
            "average_names": self.bench.average_names,
            "micro": micro,
            "macro": macro,
            "n": n,
            "errors": errors,
            "unparsed": unparsed,
            "unparsed_rate": unparsed / n if n else None,
            "subjects": subject_acc,
            "subject_n": {s: len(per_subject[s]) for s in subject_acc},
        }
        if self.bench.categories is not None:
            out["categories"] = self.bench.categories(subject_acc)
        return out


def ceval_categories(subject_acc: dict[str, float]) -> dict[str, float | None]:
    """Qwen's cal_ceval breakdown: the mean over the subjects of each category, and of Hard."""
    groups = {**CEVAL_CATEGORIES, "Hard": CEVAL_HARD}
    out: dict[str, float | None] = {}
    for name, subjects in groups.items():
        values = [subject_acc[s] for s in subjects if s in subject_acc]
        out[name] = sum(values) / len(values) if values else None
    return out
