"""Each named setup against its reference, item by item (the IFEval fidelity test's counterpart).

On a corpus of 1,116 replies (tests/support/mc_corpus.py: English and Chinese, terse and chain of
thought, markdown, LaTeX, full-width, refusals, several options named, negations, quoted option
texts, two answer lines), every extraction must equal the reference's:

- ``qwen`` MMLU: OpenCompass 0.2.6's first_option_postprocess, run live when opencompass is
  installed (scripts/test.sh installs it, test-only, without its dependencies), and pinned;
- ``qwen`` C-Eval: Qwen's evaluate_chat_ceval.py extract_answer (not packaged: expectations
  derived by running it on this corpus, pinned in tests/data/reference_expectations.json);
- ``simple-evals``: simple-evals' normalisation and answer regexes (pinned the same way).

Rendered prompts are compared with the references' templates through digests of every sample.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.tasks import build_task
from orchestrator.tasks.references import opencompass_first_option, qwen_ceval, simple_evals
from tests.support.mc_corpus import Case, corpus, samples

EXPECTED = json.loads((Path(__file__).parent / "data" / "reference_expectations.json").read_text(encoding="utf-8"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def cases(data_dir: Path) -> dict[str, list[tuple[Case, Any]]]:
    out: dict[str, list[tuple[Case, Any]]] = {}
    for bench in ("mmlu", "ceval"):
        pool = samples(data_dir, bench)
        out[bench] = [(c, pool[c.sample_id]) for c in corpus(data_dir, bench)]
    return out


def test_the_corpus_is_the_one_the_expectations_were_derived_on(cases: dict[str, list[tuple[Case, Any]]]) -> None:
    built = {c.case_id: _sha(c.reply) for pairs in cases.values() for c, _ in pairs}
    assert built == {k: v["sha"] for k, v in EXPECTED["cases"].items()}, "corpus changed: derive the expectations again"
    assert len(built) > 1000


def _agreement(
    pairs: list[tuple[Case, Any]], ours: Callable[[Case, Any], str | None], key: str
) -> tuple[int, list[tuple[str, str, Any, Any]]]:
    misses = []
    for case, sample in pairs:
        want = EXPECTED["cases"][case.case_id][key]
        got = ours(case, sample)
        if got != want:
            misses.append((case.case_id, case.reply[:80], got, want))
    return len(pairs), misses


@pytest.mark.parametrize(
    ("bench", "setup", "ours"),
    [
        ("mmlu", "qwen", lambda c, s: opencompass_first_option(c.reply)[0]),
        ("ceval", "qwen", lambda c, s: qwen_ceval(c.reply, s.question, s.choices)[0]),
        ("mmlu", "simple_evals", lambda c, s: simple_evals(c.reply)[0]),
        ("ceval", "simple_evals", lambda c, s: simple_evals(c.reply)[0]),
    ],
    ids=["qwen-mmlu", "qwen-ceval", "simple-evals-mmlu", "simple-evals-ceval"],
)
def test_extraction_agrees_with_the_reference_on_every_reply(
    cases: dict[str, list[tuple[Case, Any]]], bench: str, setup: str, ours: Callable[[Case, Any], str | None]
) -> None:
    n, misses = _agreement(cases[bench], ours, setup)
    assert not misses, f"{len(misses)} of {n} differ: {misses[:5]}"


def test_the_task_scores_with_the_reference_extractor(cases: dict[str, list[tuple[Case, Any]]], data_dir: Path) -> None:
    """The same through MultipleChoiceTask.score, as a run scores: the wiring, not only the function."""
    for bench in ("mmlu", "ceval"):
        for setup, key in (("qwen", "qwen"), ("simple-evals", "simple_evals")):
            task = build_task(bench, data_dir, limit=300, setup=setup)
            for case, sample in cases[bench][:200]:
                assert task.score(sample, case.reply).extracted == EXPECTED["cases"][case.case_id][key], case


def _opencompass() -> Any:
    """opencompass 0.2.6's text post-processors, without its heavy package init."""
    spec = importlib.util.find_spec("opencompass")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("opencompass is not installed (scripts/test.sh installs 0.2.6 with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "text_postprocessors.py"
    registry = types.ModuleType("opencompass.registry")
    registry.TEXT_POSTPROCESSORS = types.SimpleNamespace(register_module=lambda *a, **k: lambda f: f)  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("opencompass", "opencompass.registry")}
    sys.modules["opencompass"] = types.ModuleType("opencompass")
    sys.modules["opencompass.registry"] = registry
    try:
        module_spec = importlib.util.spec_from_file_location("opencompass_text_postprocessors", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def test_mmlu_extraction_equals_opencompass_run_live(cases: dict[str, list[tuple[Case, Any]]]) -> None:
    oc = _opencompass()
    replies = [c.reply for pairs in cases.values() for c, _ in pairs]
    extra = ["", "1. B", "故选A只有选项B是对", "The answer is: (C)", "答案是 D。", "B\nC", "所以 C.", "A:"]
    for reply in replies + extra:
        assert opencompass_first_option(reply)[0] == (oc.first_option_postprocess(reply, "ABCD") or None), reply


def _digest(messages: list[tuple[tuple[str, str], ...]]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(json.dumps([list(t) for t in m], ensure_ascii=False).encode())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("bench", "setup", "key"),
    [("ceval", "qwen", "ceval_qwen"), ("mmlu", "qwen", "mmlu_qwen"), ("mmlu", "simple-evals", "mmlu_simple_evals")],
)
def test_rendered_prompts_equal_the_references_character_for_character(
    data_dir: Path, bench: str, setup: str, key: str
) -> None:
    task = build_task(bench, data_dir, limit=300, setup=setup)
    assert _digest([s.messages for s in task.samples()]) == EXPECTED["prompts"][key]


def test_qwen_mmlu_prompt_shape(data_dir: Path) -> None:
    """What the digest stands for, spelled out on one sample: five answered dev turns, each answer
    with its trailing newline, then the question in the "Q: … A: " form."""
    [sample] = build_task("mmlu", data_dir, subjects=["anatomy"], limit=1).samples()
    roles = [r for r, _ in sample.messages]
    assert roles == ["user", "assistant"] * 5 + ["user"]
    assert all(c.endswith("\n") and len(c) == 2 for r, c in sample.messages if r == "assistant")
    assert sample.messages[0][1].startswith("There is a single choice question about anatomy.")
    assert "\nQuestion: " in sample.messages[0][1] and sample.messages[0][1].endswith("\nAnswer: ")
    assert "\nQ: " in sample.messages[-1][1] and sample.messages[-1][1].endswith("\nA: ")


def test_qwen_ceval_prompt_shape(data_dir: Path) -> None:
    [sample] = build_task("ceval", data_dir, subjects=["law"], limit=1).samples()
    (role0, system), (role1, user) = sample.messages
    assert (role0, system, role1) == ("system", "You are a helpful assistant.", "user")
    assert user.startswith(sample.question + "\n\nA. ") and user.endswith(f"D. {sample.choices[3]}\n")
    assert "答案" not in user.split("\n\n", 1)[1]  # no instruction, no 答案：


def test_qwen_ceval_never_abstains_and_reads_the_last_answer_line() -> None:
    options = ("甲方", "乙方", "丙方", "丁方")
    assert qwen_ceval("我不知道", "下列正确的是____。", options)[1] == "fuzzy_option"
    assert qwen_ceval("答案：A … 答案：C", "下列正确的是____。", options)[0] == "C"
