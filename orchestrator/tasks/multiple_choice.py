"""One multiple-choice task builder serving MMLU and C-Eval.

A benchmark is data (loader, prompt, extraction cascade, averaging), not a class of its own.

Extraction cascades (setup ``qwen``); the first rule that fires wins, and within a rule the first
match in the reply wins. A reply naming two letters with no answer phrase therefore resolves to
the first standalone letter, as in Qwen's and C-Eval's official scripts.

English (MMLU):
  1. ``answer_phrase``  "answer is B", "Answer: (C)", "**Answer:** D", "the correct option is A"
  2. ``correct_phrase`` "B is correct", "(C) is the right answer"
  3. ``leading_letter`` a reply that starts with the letter: "B", "B.", "(B) text", "**B**"
  4. ``first_letter``   the first standalone capital A-D
  otherwise ``unparsed``.

Chinese (C-Eval):
  1. ``answer_phrase``  "答案：B", "答案:B", "答案是B", "答案为（C）", "选B", "正确选项是D"
  2. ``correct_phrase`` "B选项正确", "C是对的"
  3. ``leading_letter`` as above, with full-width brackets
  4. ``first_letter``   the first A-D not part of a Latin word
  5. ``option_text``    the option whose text the reply contains (longest), else the most similar
                        option text with similarity >= 0.6
  otherwise ``unparsed``.

Setup ``simple-evals`` (both benchmarks): 0-shot, OpenAI simple-evals' multiple-choice template
(think step by step, last line 'Answer: $LETTER'); one rule, ``answer_line``: the *last*
"Answer: X" (also "答案：X") in the reply, otherwise ``unparsed``.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.hub import fetch
from orchestrator.tasks.base import DataError, Sample, Score, stratified_subset

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
# Extraction
# ---------------------------------------------------------------------------------------------
_L = r"([ABCD])"
_NOT_LATIN_BEFORE = r"(?<![A-Za-z])"
_NOT_LATIN_AFTER = r"(?![A-Za-z])"

EN_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "answer_phrase",
        re.compile(
            r"(?i:answer|correct (?:answer|option|choice)|choice|option)[\s*:：]*(?:is|would be)?[\s*:：]*"
            r"(?i:option\s*)?[\(\[]?\**\s*" + _L + _NOT_LATIN_AFTER
        ),
    ),
    (
        "correct_phrase",
        re.compile(_NOT_LATIN_BEFORE + r"[\(\[]?" + _L + r"[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right)"),
    ),
    ("leading_letter", re.compile(r"^\s*[\(\[*]*" + _L + r"(?:[\)\].:,*]|\s|$)")),
    ("first_letter", re.compile(_NOT_LATIN_BEFORE + _L + _NOT_LATIN_AFTER)),
)

ZH_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "answer_phrase",
        re.compile(
            r"(?:答案|正确答案|正确选项|选项|选择|应选|选)\s*(?:应该|应)?\s*(?:是|为|选)?\s*[:：]?\s*"
            r"[\(（\[【]?\**" + _L + _NOT_LATIN_AFTER
        ),
    ),
    ("correct_phrase", re.compile(_NOT_LATIN_BEFORE + _L + r"\s*(?:选项|项)?\s*(?:是)?\s*(?:正确|对的|对)")),
    ("leading_letter", re.compile(r"^\s*[\(（\[【*]*" + _L + r"(?:[\)）\]】.．。:：,，、*]|\s|$)")),
    ("first_letter", re.compile(_NOT_LATIN_BEFORE + _L + _NOT_LATIN_AFTER)),
)

SIMPLE_EVALS_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("answer_line", re.compile(r"(?i:answer|答案|答)[ \t*]*[:：][ \t*]*\$?\(?\**([ABCD])(?![A-Za-z])")),
)
LAST_MATCH_RULES = frozenset({"answer_line"})

THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def extract_choice(
    reply: str, rules: Sequence[tuple[str, re.Pattern[str]]], options: Sequence[str] | None = None
) -> tuple[str | None, str]:
    """Apply a cascade to a reply; returns (letter or None, rule name)."""
    text = THINK_BLOCK.sub("", reply).strip()
    for name, pattern in rules:
        if name in LAST_MATCH_RULES:
            found = pattern.findall(text)
            if found:
                return found[-1], name
            continue
        m = pattern.search(text)
        if m:
            return m.group(1), name
    if options is not None and text:
        letter = match_option_text(text, options)
        if letter is not None:
            return letter, "option_text"
    return None, "unparsed"


def match_option_text(text: str, options: Sequence[str], min_ratio: float = 0.6) -> str | None:
    """The option the reply quotes (longest contained text wins), else the most similar one."""
    contained = [(len(o.strip()), i) for i, o in enumerate(options) if o.strip() and o.strip() in text]
    if contained:
        return LETTERS[max(contained)[1]]
    ratios = [(difflib.SequenceMatcher(None, text, o.strip()).ratio(), -i) for i, o in enumerate(options)]
    best, neg_i = max(ratios)
    return LETTERS[-neg_i] if best >= min_ratio else None


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
def _options_block(q: Question) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, q.options, strict=True))


def mmlu_messages(q: Question, shots: Sequence[Question]) -> tuple[tuple[str, str], ...]:
    """Qwen setup: 5-shot from dev as user/assistant turns, subject-specific instruction."""
    hint = (
        f"There is a single choice question about {q.subject.replace('_', ' ')}. "
        "Answer the question by replying A, B, C or D."
    )

    def user(x: Question) -> str:
        return f"{hint}\nQuestion: {x.question}\n{_options_block(x)}\nAnswer: "

    turns: list[tuple[str, str]] = []
    for shot in shots:
        turns += [("user", user(shot)), ("assistant", shot.answer)]
    turns.append(("user", user(q)))
    return tuple(turns)


def ceval_messages(q: Question, shots: Sequence[Question], subject_name: str) -> tuple[tuple[str, str], ...]:
    """Qwen setup: the official C-Eval instruction, 0-shot by default."""
    hint = f"以下是中国关于{subject_name}考试的单项选择题，请选出其中的正确答案。"

    def user(x: Question) -> str:
        return f"{hint}\n\n{x.question}\n{_options_block(x)}\n答案："

    turns: list[tuple[str, str]] = []
    for shot in shots:
        turns += [("user", user(shot)), ("assistant", shot.answer)]
    turns.append(("user", user(q)))
    return tuple(turns)


SIMPLE_EVALS_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{question}\n\nA) {a}\nB) {b}\nC) {c}\nD) {d}"
)


def simple_evals_messages(q: Question) -> tuple[tuple[str, str], ...]:
    """simple-evals setup: 0-shot, chain of thought, final 'Answer: $LETTER' line."""
    a, b, c, d = q.options
    return (("user", SIMPLE_EVALS_TEMPLATE.format(question=q.question, a=a, b=b, c=c, d=d)),)


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Benchmark:
    """What distinguishes one multiple-choice benchmark from another."""

    name: str
    local_dir: str  # folder under data_dir
    hub_repo: str
    eval_split: str
    shot_split: str
    header: bool
    default_shots: int
    default_max_tokens: int
    rules: tuple[tuple[str, re.Pattern[str]], ...]
    option_text_fallback: bool
    headline: str  # "micro" or "macro"


MMLU = Benchmark("mmlu", "mmlu", "cais/mmlu", "test", "dev", False, 5, 16, EN_RULES, False, "micro")
CEVAL = Benchmark("ceval", "ceval", "ceval/ceval-exam", "val", "dev", True, 0, 16, ZH_RULES, True, "macro")
BENCHMARKS = {b.name: b for b in (MMLU, CEVAL)}


SETUP_DEFAULT_MAX_TOKENS = {"qwen": None, "simple-evals": 2048}  # None: the benchmark's own default


class MultipleChoiceTask:
    """A multiple-choice benchmark under a named setup (``qwen`` or ``simple-evals``)."""

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
        self.bench = bench
        self.name = bench.name
        self.setup = setup
        self.data_dir = data_dir
        self.limit = limit
        self.wanted_subjects = tuple(subjects) if subjects else None
        if setup not in SETUP_DEFAULT_MAX_TOKENS:
            raise ValueError(f"unknown setup {setup!r}")
        self.shots = 0 if setup == "simple-evals" else (bench.default_shots if shots is None else shots)
        self.max_tokens = max_tokens or SETUP_DEFAULT_MAX_TOKENS[setup] or bench.default_max_tokens
        self.rules = SIMPLE_EVALS_RULES if setup == "simple-evals" else bench.rules

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
        loader: Callable[[str, str], list[Question]] = _hub_mmlu if self.name == "mmlu" else _hub_ceval
        return loader(subject, split)

    def _subject_names(self) -> dict[str, str]:
        """C-Eval's Chinese subject names, from the official subject_mapping.json when present."""
        folder = self._folder()
        path = folder / "subject_mapping.json" if folder is not None else None
        if path is None or not path.is_file():
            return {}
        mapping = json.loads(path.read_text(encoding="utf-8"))
        return {k: v[1] for k, v in mapping.items()}

    def samples(self) -> list[Sample]:
        """Deterministic samples: ids are ``subject/index`` in the original split."""
        by_subject = {s: self._load(s, self.bench.eval_split) for s in self._subjects()}
        chosen = stratified_subset(by_subject, self.limit, seed=self.name)
        names = self._subject_names() if self.name == "ceval" else {}
        out = []
        for subject in sorted(chosen):
            shots = self._load(subject, self.bench.shot_split)[: self.shots] if self.shots else []
            for q in chosen[subject]:
                if self.setup == "simple-evals":
                    messages = simple_evals_messages(q)
                elif self.name == "mmlu":
                    messages = mmlu_messages(q, shots)
                else:
                    messages = ceval_messages(q, shots, names.get(subject, subject.replace("_", " ")))
                out.append(Sample(f"{subject}/{q.index}", subject, messages, q.answer, q.options))
        return out

    # -- scoring ----------------------------------------------------------------------------
    def score(self, sample: Sample, reply: str) -> Score:
        """Extract a letter by the cascade and compare with the gold answer."""
        options = sample.choices if self.bench.option_text_fallback and self.setup == "qwen" else None
        letter, rule = extract_choice(reply, self.rules, options)
        details = {"think_stripped": True} if THINK_BLOCK.search(reply) else {}
        return Score(letter, rule, letter == sample.target, details)

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Micro and macro accuracy over answered records; errors are counted, not scored."""
        per_subject: dict[str, list[bool]] = defaultdict(list)
        errors = unparsed = 0
        for r in records:
            if r.get("error"):
                errors += 1
                continue
            per_subject[r["subject"]].append(bool(r["correct"]))
            unparsed += r.get("rule") == "unparsed"
        n = sum(len(v) for v in per_subject.values())
        micro = sum(sum(v) for v in per_subject.values()) / n if n else None
        subject_acc = {s: sum(v) / len(v) for s, v in sorted(per_subject.items())}
        macro = sum(subject_acc.values()) / len(subject_acc) if subject_acc else None
        return {
            "accuracy": micro if self.bench.headline == "micro" else macro,
            "average": self.bench.headline,
            "micro": micro,
            "macro": macro,
            "n": n,
            "errors": errors,
            "unparsed": unparsed,
            "unparsed_rate": unparsed / n if n else None,
            "subjects": subject_acc,
        }
