"""Extraction cascades with hand-written replies, including replies that must not parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.tasks.multiple_choice import EN_RULES, SIMPLE_EVALS_RULES, ZH_RULES, extract_choice

OPTIONS = ("北京", "上海", "广州", "深圳市南山区")


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
        ("answer: b", None, "unparsed"),  # lower-case letters are words, not options
        ("Looking at it, C is correct.", "C", "correct_phrase"),
        ("Both look plausible, but (B) is the right one", "B", "correct_phrase"),
        ("It must be D", "D", "first_letter"),
        ("<think>Maybe A? No.</think>C", "C", "leading_letter"),
        # Two different letters and no answer phrase: the first standalone letter (documented rule).
        ("Either D or A", "D", "first_letter"),
        # Must not parse:
        ("I don't know.", None, "unparsed"),
        ("None of these options are correct", None, "unparsed"),
        ("", None, "unparsed"),
        ("ABCD", None, "unparsed"),
        ("Dogs are mammals", None, "unparsed"),
    ],
)
def test_english_cascade(reply: str, letter: str | None, rule: str) -> None:
    assert extract_choice(reply, EN_RULES) == (letter, rule)


@pytest.mark.parametrize(
    ("reply", "letter", "rule"),
    [
        ("答案：B", "B", "answer_phrase"),
        ("答案:C", "C", "answer_phrase"),
        ("答案是D。", "D", "answer_phrase"),
        ("正确答案为（A）", "A", "answer_phrase"),
        ("我选B", "B", "answer_phrase"),
        ("经过分析，B选项正确。", "B", "correct_phrase"),
        ("C是对的", "C", "correct_phrase"),
        ("（A）北京", "A", "leading_letter"),
        ("A．北京", "A", "leading_letter"),
        ("根据题意应该是C吧", "C", "first_letter"),
        ("我认为是上海。", "B", "option_text"),
        ("深圳市南山区", "D", "option_text"),
        ("<think>A 或者 B</think>答案：C", "C", "answer_phrase"),
        # Must not parse:
        ("我不知道", None, "unparsed"),
        ("这道题没有正确选项", None, "unparsed"),
        ("", None, "unparsed"),
        ("Python编程", None, "unparsed"),
    ],
)
def test_chinese_cascade(reply: str, letter: str | None, rule: str) -> None:
    assert extract_choice(reply, ZH_RULES, OPTIONS) == (letter, rule)


def test_option_text_prefers_longest_quoted_option() -> None:
    options = ("上海", "上海市", "广州", "北京")
    assert extract_choice("应该是上海市", ZH_RULES, options) == ("B", "option_text")


@pytest.mark.parametrize(
    ("reply", "letter", "rule"),
    [
        ("Let me think. A seems wrong.\nAnswer: C", "C", "answer_line"),
        ("Answer: A\nWait, that is wrong.\nAnswer: D", "D", "answer_line"),  # the last answer line wins
        ("ANSWER: $B$", "B", "answer_line"),
        ("answer : (C)", "C", "answer_line"),
        ("**Answer:** B", "B", "answer_line"),
        ("**Answer**: C", "C", "answer_line"),
        ("分析如下……\n答案：D", "D", "answer_line"),
        ("<think>Answer: A</think>\nAnswer: B", "B", "answer_line"),
        # Must not parse: no answer line (the qwen cascade would have taken the letter).
        ("The answer is B.", None, "unparsed"),
        ("B", None, "unparsed"),
        ("Answer: E", None, "unparsed"),
        ("Answer: Because", None, "unparsed"),
    ],
)
def test_simple_evals_answer_line(reply: str, letter: str | None, rule: str) -> None:
    assert extract_choice(reply, SIMPLE_EVALS_RULES) == (letter, rule)


def test_setups_change_prompt_and_store_key(data_dir: Path) -> None:
    from orchestrator.store import RunStore
    from orchestrator.tasks import build_task

    qwen = build_task("ceval", data_dir, limit=60)
    simple = build_task("ceval", data_dir, limit=60, setup="simple-evals")
    a, b = qwen.samples()[0], simple.samples()[0]
    assert a.id == b.id and a.prompt_digest() != b.prompt_digest()
    assert b.messages[0][1].startswith("Answer the following multiple choice question.")
    assert "\nA) " in b.messages[0][1] and simple.max_tokens >= 1024
    mmlu = build_task("mmlu", data_dir, limit=60, setup="simple-evals").samples()[0]
    assert len(mmlu.messages) == 1  # 0-shot
    assert simple.score(b, "Answer: B").rule == "answer_line"
    store = RunStore(Path("/r"))
    assert store.samples_path("t", "ceval", "qwen") != store.samples_path("t", "ceval", "simple-evals")
