"""IFEval: 541 verifiable-instruction prompts, scored with Google's own checker classes.

The 25 checkers come from the ``if-verifiable`` package (Google's classes); the evaluation loop
is ours and follows the official one (google-research ``instruction_following_eval``):

- each instruction: ``build_description(**kwargs)``, then, if the checker's arguments name a
  ``prompt``, ``build_description(prompt=prompt)``;
- strict: the response is non-empty (after strip) and passes ``check_following``;
- loose: any of the 8 official variants passes (the response; with first, last or both lines
  removed; each of those four with ``*`` removed).

Unlike the package's helpers, an unknown instruction id is an error (never a silent skip) and an
empty response yields a False verdict per instruction (so instruction-level counts stay right).
Determinism: langdetect is seeded with 0, and the checkers' own ``random`` draws (the official
``keywords:letter_frequency`` draws a random letter when the given one is not a letter) are seeded
per sample and instruction; the resolved arguments are recorded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import random
import sys
import types
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.hub import fetch
from orchestrator.records import SampleRecord
from orchestrator.stats import Outcomes
from orchestrator.tasks.base import DataError, Job, Sample, Score, stratified_subset
from orchestrator.tasks.ifeval import fastpaths
from orchestrator.tasks.ifeval.punkt import ensure_punkt
from orchestrator.tasks.robust import THINK_BLOCK

DEFAULT_MAX_TOKENS = 1280


class UnknownInstructionError(ValueError):
    """An instruction id that no checker implements."""


def _registry() -> dict[str, Any]:
    """``INSTRUCTION_DICT`` without running ``if_verifiable/__init__`` (it imports datasets eagerly).

    No locks: scoring runs in one thread, the event loop's or the scoring process's."""
    return _load_registry()


def _load_registry() -> dict[str, Any]:
    if "if_verifiable.ifeval.instructions_registry" not in sys.modules and "if_verifiable" not in sys.modules:
        spec = importlib.util.find_spec("if_verifiable")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the if-verifiable package is required for IFEval")
        parent = types.ModuleType("if_verifiable")
        parent.__path__ = list(spec.submodule_search_locations)
        sys.modules["if_verifiable"] = parent
    import langdetect

    # Official verdicts of the language checkers depend on langdetect's random state: seed 0
    # makes detect() a pure function of the text, which also makes its answers safe to memoise
    # (the same text reaches it from several checkers and from strict and loose passes).
    langdetect.DetectorFactory.seed = 0
    # langdetect loads its 55 profiles lazily on the first detect(), and a detector created by
    # another thread meanwhile sees a half-loaded factory: load them now, once, under the lock.
    from langdetect import detector_factory

    detector_factory.init_factory()
    fastpaths.install()
    if not hasattr(langdetect.detect, "cache_info"):
        langdetect.detect = functools.lru_cache(maxsize=4096)(langdetect.detect)
        fastpaths.register_cache(langdetect.detect)
    ensure_punkt()
    module = importlib.import_module("if_verifiable.ifeval.instructions_registry")
    # The checkers draw from the module-global `random`; give them a private generator so that
    # seeding it per sample neither races with nor disturbs anyone else's use of `random`.
    for name in ("if_verifiable.ifeval.instructions", "if_verifiable.ifeval.instructions_util"):
        sys.modules[name].random = _RNG  # type: ignore[attr-defined]
    return dict(module.INSTRUCTION_DICT)


_RNG = random.Random()


@dataclass(frozen=True)
class Verdicts:
    """Per-instruction verdicts of one response, both modes."""

    strict: list[bool]
    loose: list[bool]
    resolved_args: list[dict[str, Any]]


def loose_variants(response: str) -> list[str]:
    """The 8 official loose variants of a response."""
    lines = response.split("\n")
    first_removed = "\n".join(lines[1:]).strip()
    last_removed = "\n".join(lines[:-1]).strip()
    both_removed = "\n".join(lines[1:-1]).strip()
    base = [response, first_removed, last_removed, both_removed]
    return [response, response.replace("*", ""), *base[1:], *(r.replace("*", "") for r in base[1:])]


class IFEvalChecker:
    """The official evaluation loop over Google's checker classes."""

    def __init__(self) -> None:
        self.registry = _registry()

    def _build(self, instruction_id: str, kwargs: dict[str, Any], prompt: str, seed: str) -> Any:
        cls = self.registry.get(instruction_id)
        if cls is None:
            raise UnknownInstructionError(f"unknown IFEval instruction id {instruction_id!r}")
        instruction = cls(instruction_id)
        # Seeding and drawing are not interleaved: scoring runs in one thread.
        # Seeded per sample and instruction: the same response always gets the same verdict.
        _RNG.seed(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
        instruction.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        args = instruction.get_instruction_args()
        if args and "prompt" in args:
            instruction.build_description(prompt=prompt)
        return instruction

    def check(
        self, key: str, prompt: str, instruction_ids: Sequence[str], kwargs: Sequence[dict[str, Any]], response: str
    ) -> Verdicts:
        """Strict and loose verdicts for every instruction of a prompt."""
        strict: list[bool] = []
        loose: list[bool] = []
        resolved: list[dict[str, Any]] = []
        # The official loop checks the response, then each loose variant in order until one passes.
        # Checkers are pure functions of the text, so a variant equal to one already checked (no '*'
        # to strip, a one-line reply) has the same verdict: checking each distinct text once gives
        # the official verdicts for less work.
        variants = list(dict.fromkeys(v for v in loose_variants(response) if v.strip()))
        for i, instruction_id in enumerate(instruction_ids):
            instruction = self._build(instruction_id, kwargs[i] if i < len(kwargs) else {}, prompt, f"{key}:{i}")
            first = bool(response.strip()) and bool(instruction.check_following(response))
            strict.append(first)
            loose.append(first or any(instruction.check_following(v) for v in variants if v != response))
            resolved.append(_jsonable(instruction.get_instruction_args() or {}))
        return Verdicts(strict, loose, resolved)


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(args, default=str)))


def aggregate_verdicts(items: Sequence[tuple[Sequence[str], Sequence[bool], Sequence[bool]]]) -> dict[str, Any]:
    """The four official metrics plus per-instruction-type accuracy (strict and loose)."""
    n = len(items)
    if not n:
        return {"prompt_strict": None, "prompt_loose": None, "instruction_strict": None, "instruction_loose": None}
    per_type: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for ids, strict, loose in items:
        for iid, s, lo in zip(ids, strict, loose, strict=True):
            per_type[iid].append((s, lo))
    pooled = [v for vs in per_type.values() for v in vs]
    return {
        "prompt_strict": sum(all(s) for _, s, _ in items) / n,
        "prompt_loose": sum(all(lo) for _, _, lo in items) / n,
        "instruction_strict": sum(s for s, _ in pooled) / len(pooled),
        "instruction_loose": sum(lo for _, lo in pooled) / len(pooled),
        "instructions": len(pooled),
        "per_instruction": {
            iid: {
                "n": len(vs),
                "strict": sum(s for s, _ in vs) / len(vs),
                "loose": sum(lo for _, lo in vs) / len(vs),
            }
            for iid, vs in sorted(per_type.items())
        },
    }


def load_ifeval(data_dir: Path | None) -> list[dict[str, Any]]:
    """Rows {key, prompt, instruction_id_list, kwargs}: local input_data.jsonl or google/IFEval."""
    if data_dir is not None:
        path = data_dir / "ifeval" / "input_data.jsonl"
        if not path.is_file():
            raise DataError(f"missing data file {path}")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        import datasets

        rows = [dict(r) for r in fetch("google/IFEval", lambda: datasets.load_dataset("google/IFEval", split="train"))]
    for r in rows:
        # The Hub rows carry every kwarg key of every checker, mostly None: keep the given ones.
        r["kwargs"] = [{k: v for k, v in kw.items() if v is not None} for kw in r["kwargs"]]
    return rows


_WORKER_TASK: IFEvalTask | None = None


def score_in_worker(row: dict[str, Any], reply: str) -> Score:
    """Score one reply in a scoring process, which builds the checkers once and keeps them."""
    global _WORKER_TASK
    if _WORKER_TASK is None:
        _WORKER_TASK = IFEvalTask()
    return _WORKER_TASK.score_response(row, reply)


class IFEvalTask:
    """IFEval as a task of the runner: the prompt is the single user turn."""

    name = "ifeval"
    metrics: tuple[str, ...] = ("prompt_strict", "inst_strict")

    def __init__(
        self,
        data_dir: Path | None = None,
        limit: int | None = None,
        max_tokens: int | None = None,
        setup: str = "qwen",
    ) -> None:
        self.data_dir = data_dir
        self.limit = limit
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        self.setup = setup
        self._checker: IFEvalChecker | None = None
        self._rows: dict[str, dict[str, Any]] | None = None

    @property
    def checker(self) -> IFEvalChecker:
        """Built on first use (imports the checkers and the offline punkt model)."""
        if self._checker is None:
            self._checker = IFEvalChecker()
        return self._checker

    def rows(self) -> dict[str, dict[str, Any]]:
        """Input rows by key."""
        if self._rows is None:
            self._rows = {str(r["key"]): r for r in load_ifeval(self.data_dir)}
        return self._rows

    def samples(self) -> list[Sample]:
        """One sample per prompt, stratified by the first instruction's group for --limit."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.rows().values():
            groups[r["instruction_id_list"][0].split(":")[0]].append(r)
        chosen = stratified_subset(groups, self.limit, seed="ifeval")
        out = [
            Sample(str(r["key"]), group, (("user", r["prompt"]),), gold="")
            for group in sorted(chosen)
            for r in chosen[group]
        ]
        return sorted(out, key=lambda s: int(s.id) if s.id.isdigit() else s.id)

    def score(self, sample: Sample, reply: str) -> Score:
        """Strict prompt-level verdict as ``correct``; all verdicts in details."""
        row = self.rows()[sample.id]
        return self.score_response(row, reply)

    def score_job(self, sample: Sample, reply: str) -> Job:
        """Scoring as a picklable call: the runner runs it in its scoring process (see Runner)."""
        return score_in_worker, (self.rows()[sample.id], reply)

    def score_response(self, row: dict[str, Any], reply: str) -> Score:
        """Score a response to an input row (also used for --responses files)."""
        text = THINK_BLOCK.sub("", reply)
        details: dict[str, Any] = {"think_stripped": True} if text != reply else {}
        if text != reply:
            text = text.strip()
        v = self.checker.check(str(row["key"]), row["prompt"], row["instruction_id_list"], row["kwargs"], text)
        details.update(
            instruction_id_list=list(row["instruction_id_list"]),
            strict=v.strict,
            loose=v.loose,
            resolved_args=v.resolved_args,
        )
        return Score(None, "ifeval", all(v.strict), details)

    def outcomes(self, records: Sequence[SampleRecord], metric: str | None = None) -> Outcomes:
        """Per answered prompt: ``prompt_strict`` (the headline) all instructions followed, or
        ``inst_strict`` the number followed of the prompt's instructions (clustered by prompt)."""
        answered = [r for r in records if r.answered]
        strict = [(r.score_details or {}).get("strict") or [] for r in answered]
        if metric == "inst_strict":
            num, den = [float(sum(s)) for s in strict], [float(len(s)) for s in strict]
        else:
            num, den = [float(all(s)) for s in strict], [1.0] * len(strict)
        return Outcomes(
            "micro", [r.id for r in answered], [r.subject for r in answered], np.asarray(num), np.asarray(den)
        )

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        """Prompt-level strict is the headline accuracy."""
        ok = [r for r in records if r.answered]
        details = [r.score_details or {} for r in ok]
        items = [(d["instruction_id_list"], d["strict"], d["loose"]) for d in details]
        metrics = aggregate_verdicts(items)
        return {
            "accuracy": metrics["prompt_strict"],
            "headline": "prompt_strict",
            **metrics,
            "n": len(ok),
            "errors": len(records) - len(ok),
            "unparsed": 0,
            "unparsed_rate": 0.0 if ok else None,
        }
