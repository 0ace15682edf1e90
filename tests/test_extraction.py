"""The ``robust`` setup's extractor on hand-written replies, one per class the reference
extractors get wrong (tests/test_reference_fidelity.py holds those to their references)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.setups import SETUP_VERSIONS, store_key
from orchestrator.tasks.references import opencompass_first_option, qwen_ceval, simple_evals
from orchestrator.tasks.robust import robust_extract

OPTIONS = ("北京", "上海市", "广州", "深圳市南山区")


@pytest.mark.parametrize(
    ("reply", "letter", "rule"),
    [
        ("B", "B", "leading_letter"),
        ("B.", "B", "leading_letter"),
        ("(C) because it is larger", "C", "leading_letter"),
        ("**D**", "D", "leading_letter"),
        ("The answer is B.", "B", "answer_phrase"),
        ("Answer: (C)", "C", "answer_phrase"),
        ("**Answer:** D", "D", "answer_phrase"),
        ("I think the correct option is A, not B.", "A", "answer_phrase"),
        # A bare mention before the answer does not decide (OpenCompass and Qwen read A here).
        ("Option A is tempting, but option B fits best. The answer is B.", "B", "answer_phrase"),
        # A rejected option does not decide; the conclusion does.
        ("A is incorrect. C is incorrect. Therefore, B.", "B", "conclusion"),
        ("The answer is not B; it is D.", "D", "final_letter"),
        # Two answer lines: the last one (a corrected draft).
        ("Answer: A\nWait, let me reconsider.\nAnswer: C", "C", "answer_phrase"),
        ("D. (A), (B), and (C) is correct", "D", "leading_letter"),
        ("Answer: $\\boxed{D}$", "D", "answer_phrase"),
        ("Answer: Ｄ", "D", "answer_phrase"),
        ("Looking at it, C is correct.", "C", "correct_phrase"),
        ("It must be D", "D", "final_letter"),
        ("<think>Maybe A? No.</think>C", "C", "leading_letter"),
        # Ambiguous or no answer: unparsed (counted apart in the report, scored wrong).
        ("Either D or A", None, "unparsed"),
        ("Both A and C are correct.", None, "unparsed"),
        ("I don't know.", None, "unparsed"),
        ("None of these options are correct", None, "unparsed"),
        ("", None, "unparsed"),
        ("ABCD", None, "unparsed"),
        ("answer: b", None, "unparsed"),  # a lower-case letter is a word
    ],
)
def test_robust_english(reply: str, letter: str | None, rule: str) -> None:
    assert robust_extract(reply) == (letter, rule)


@pytest.mark.parametrize(
    ("reply", "letter", "rule"),
    [
        ("答案：B", "B", "answer_phrase"),
        ("答案是C。", "C", "answer_phrase"),
        ("答案为（D）", "D", "answer_phrase"),
        ("我认为应该选择B选项", "B", "answer_phrase"),
        ("正确选项是A", "A", "answer_phrase"),
        # A bare mention of a wrong option does not decide (Qwen's script reads D here).
        ("选项D错误；选项A正确。", "A", "correct_phrase"),
        ("答案：A … 答案：C", "C", "answer_phrase"),
        ("答案不是A，是C", "C", "final_letter"),
        ("因此，答案是C。", "C", "answer_phrase"),
        ("所以选D", "D", "answer_phrase"),
        ("B选项正确", "B", "correct_phrase"),
        ("（B）", "B", "leading_letter"),
        ("答案：Ｃ", "C", "answer_phrase"),
        ("应该是上海市", "B", "option_text"),
        ("深圳市南山区最合适", "D", "option_text"),
        ("A和C都正确", None, "unparsed"),
        ("无法回答", None, "unparsed"),
    ],
)
def test_robust_chinese(reply: str, letter: str | None, rule: str) -> None:
    assert robust_extract(reply, OPTIONS) == (letter, rule)


def test_the_references_on_these_classes() -> None:
    """What the references give (and the reference setups must keep giving): where it is wrong or
    a guess, only ``robust`` may differ."""
    assert opencompass_first_option("Option A is tempting, but option B fits best. The answer is B.")[0] == "B"
    assert opencompass_first_option("The answer is not B; it is D.")[0] == "D"
    assert qwen_ceval("选项D错误…；选项A正确。", "下列正确的是____。", ("甲", "乙", "丙", "丁"))[0] == "A"
    assert qwen_ceval("A和C都正确", "下列正确的是____。", ("甲", "乙", "丙", "丁"))[0] == "C"  # a guess
    assert simple_evals("Answer: A\nAnswer: C")[0] == "A"  # the first match
    assert simple_evals("Answer: $\\boxed{D}$")[0] == "D" and simple_evals("Answer: Ｄ")[0] == "D"


def test_setups_change_prompt_and_store_key(data_dir: Path) -> None:
    from orchestrator.store import RunStore
    from orchestrator.tasks import build_task

    qwen = build_task("ceval", data_dir, limit=60)
    simple = build_task("ceval", data_dir, limit=60, setup="simple-evals")
    robust = build_task("ceval", data_dir, limit=60, setup="robust")
    a, b, c = qwen.samples()[0], simple.samples()[0], robust.samples()[0]
    assert a.id == b.id and a.prompt_digest() != b.prompt_digest()
    assert a.messages == c.messages  # robust keeps qwen's prompts; only extraction differs
    assert b.messages[0][1].startswith("Answer the following multiple choice question.")
    assert "\nA) " in b.messages[0][1] and simple.max_tokens >= 1024
    mmlu = build_task("mmlu", data_dir, limit=60, setup="simple-evals").samples()[0]
    assert len(mmlu.messages) == 1  # 0-shot
    assert simple.score(b, "Answer: B").rule == "answer_line"
    keys = {store_key(v) for v in SETUP_VERSIONS.values()}
    assert keys == {"qwen@2", "simple-evals@2", "robust@1"}
    store = RunStore(Path("/r"))
    assert store.samples_path("t", "ceval", "qwen@2") != store.samples_path("t", "ceval", "simple-evals@2")
    assert store_key("qwen@1") == "qwen"  # runs from before versions were in the file names


def _legacy_run(tmp_path: Path, data_dir: Path) -> Path:
    """A run made by qwen@1 (samples files named by the bare setup), as such runs are on disk."""
    import json

    from orchestrator.manifest import parse_manifest

    manifest = parse_manifest(
        {
            "run": {"name": "old", "output_dir": str(tmp_path), "data_dir": str(data_dir)},
            "tasks": {"ceval": {"limit": 4}},
            "targets": [{"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "url": "http://h:1"}],
        }
    )
    run = tmp_path / "old"
    (run / "samples" / "t").mkdir(parents=True)
    meta = {"run_id": "old", "manifest": manifest.to_dict(), "setup": {"name": "qwen", "version": "qwen@1"}}
    (run / "run.json").write_text(json.dumps(meta))
    records = [
        {"id": f"law/{i}", "task": "ceval", "subject": "law", "gold": "C", "reply": "C", "extracted": "C",
         "rule": "leading_letter", "correct": i % 2 == 0, "error": None, "prompt_digest": "x"}
        for i in range(4)
    ]  # fmt: skip
    (run / "samples" / "t" / "ceval.qwen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_old_runs_still_render_and_are_not_continued_with_a_new_protocol(tmp_path: Path, data_dir: Path) -> None:
    from orchestrator.cli import main
    from orchestrator.report import build_report

    run = _legacy_run(tmp_path, data_dir)
    report = build_report(run)
    assert report["setup_version"] == "qwen@1"
    assert report["rows"][0]["tasks"]["ceval"]["n"] == 4 and report["rows"][0]["tasks"]["ceval"]["accuracy"] == 0.5
    assert main(["bench", "--resume", str(run), "--no-progress"]) == 2  # qwen@1 records are not mixed with qwen@2
    assert main(["score", str(run)]) == 2  # nor re-scored by qwen@2's extractors


def test_report_names_both_averages_and_the_ceval_categories(tmp_path: Path, data_dir: Path) -> None:
    from orchestrator.report import write_report

    run = _legacy_run(tmp_path, data_dir)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "## ceval averages" in md
    assert "macro (Qwen cal_ceval AVERAGE (mean over subjects)) *" in md
    for category in ("STEM", "Social Science", "Humanities", "Other", "Hard"):
        assert category in md
    # law is a Humanities subject: its mean is the category's; Hard has none of it.
    row = next(line for line in md.splitlines() if line.startswith("| t |") and "50.0" in line)
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells == ["t", "50.0", "50.0", "", "", "50.0", "", ""]  # micro, macro, STEM … Humanities, Other, Hard
