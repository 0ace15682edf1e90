"""Task, Sample and Score types shared by every benchmark."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.errors import DataError
from orchestrator.records import SampleRecord
from orchestrator.stats import Outcomes

__all__ = ["DataError", "Job", "Sample", "Score", "Task", "stratified_subset"]


@dataclass(frozen=True)
class Sample:
    """One question, ready to send: its messages, the gold answer (a letter; "" where the task
    judges otherwise, IFEval), the options of a multiple-choice question, and what else its
    scorer reads (``metadata``: the question's own text for Qwen's C-Eval extraction; IFEval's
    instructions)."""

    id: str  # deterministic: subject + index in the original split
    subject: str
    messages: tuple[tuple[str, str], ...]
    gold: str
    choices: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def question(self) -> str:
        """The question's own text, where the task keeps it."""
        return str(self.metadata.get("question", ""))

    def prompt_digest(self) -> str:
        """sha256 of the exact messages: a changed prompt never passes as the same sample."""
        return messages_digest(self.messages)


def messages_digest(messages: tuple[tuple[str, str], ...]) -> str:
    """A prompt's identity (sha256 of its exact chat turns): a sample's, a load request's."""
    data = json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Score:
    """The verdict on one reply, with how it was reached."""

    extracted: str | None
    rule: str  # which rule of the extraction cascade fired, or "unparsed"
    correct: bool
    details: dict[str, Any] = field(default_factory=dict)


Job = tuple[Callable[..., "Score"], tuple[Any, ...]]  # a module-level function and its arguments


class Task(Protocol):
    """A benchmark: its samples, how a reply is scored, how records aggregate.

    ``score_job`` is the declared hook for heavy scoring (IFEval's checkers): the same scoring as
    ``score`` as a picklable job the runner sends to its scoring process; None where scoring is
    light enough for the event loop's process (a letter comparison).
    """

    name: str
    setup: str
    max_tokens: int
    # The levels the report gives an interval each (the headline is one of them), by ``outcomes`` name.
    metrics: tuple[str, ...]

    def samples(self) -> list[Sample]:
        """All samples of this task under its options (limit, subjects, shots)."""
        ...

    def score(self, sample: Sample, reply: str) -> Score:
        """Extract and judge one reply."""
        ...

    def score_job(self, sample: Sample, reply: str) -> Job | None:
        """``score`` as a job for the scoring process, or None (score in this process)."""
        ...

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """Headline accuracy and the other figures from stored records."""
        ...

    def outcomes(self, records: Sequence[SampleRecord], metric: str | None = None) -> Outcomes:
        """Per-sample outcomes of the headline metric (or another of the task's), for intervals
        and paired comparisons."""
        ...


def stratified_subset(by_subject: dict[str, list[Any]], limit: int | None, seed: str) -> dict[str, list[Any]]:
    """A deterministic subset of about ``limit`` items in which every subject appears.

    Each subject gets a share proportional to its size (largest remainders, at least one),
    and its items are a seeded shuffle of the subject, so the same limit always picks the
    same questions (paired comparisons across runs line up).
    """
    total = sum(len(v) for v in by_subject.values())
    if limit is None or limit >= total:
        return by_subject
    subjects = sorted(by_subject)
    if limit < len(subjects):
        # Too few to cover every subject: one each from a seeded choice of subjects.
        chosen = sorted(random.Random(f"{seed}:subjects").sample(subjects, limit))
        quotas = dict.fromkeys(chosen, 1)
    else:
        quotas = {s: 1 for s in subjects}
        remaining = limit - len(subjects)
        ideal = {s: remaining * (len(by_subject[s]) - 1) / (total - len(subjects)) for s in subjects}
        for s in subjects:
            quotas[s] += int(ideal[s])
        left = limit - sum(quotas.values())
        by_remainder = sorted(subjects, key=lambda s: (-(ideal[s] - int(ideal[s])), s))
        for s in by_remainder[:left]:
            quotas[s] += 1
    out: dict[str, list[Any]] = {}
    for s, k in quotas.items():
        order = list(range(len(by_subject[s])))
        random.Random(f"{seed}:{s}").shuffle(order)
        out[s] = [by_subject[s][i] for i in sorted(order[:k])]
    return out
