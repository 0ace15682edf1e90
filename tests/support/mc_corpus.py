"""A corpus of realistic multiple-choice replies, to hold each setup's extraction to its reference.

Replies are made from templates (terse letters, English and Chinese chains of thought, markdown,
LaTeX, full-width forms, refusals, replies naming several options, negations, quoted option
texts, two answer lines, ...) filled with real questions of the shared MMLU and C-Eval data, so
nothing of the data is copied into the repository: a case is (template, question id, letters),
and the reply is rebuilt from the data at test time. The same seed gives the same corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from orchestrator.tasks import build_task
from orchestrator.tasks.base import Sample

# {X}, {Y}: letters (X usually the intended answer); {TX}, {TY}: those options' texts;
# {Q}: the question's text.
EN_TEMPLATES = (
    "{X}", "{X}.", "({X})", "**{X}**", "{X}) {TX}", "{X}. {TX}", " {X}", "{X}\n", "{x}", "Answer: {X}",
    "Answer: ({X})", "answer: {x}", "ANSWER: {X}", "Answer:{X}", "**Answer:** {X}", "**Answer: {X}**",
    "The answer is {X}.", "The answer is ({X}).", "The answer is: {X}", "The correct answer is {X}.",
    "The correct answer is option {X}.", "The answer to the question is {X}.", "I think the answer is {X}.",
    "Answer: $\\boxed{{{X}}}$", "Answer: \\boxed{{{X}}}", "Answer: ${X}$", "Answer: $\\text{{{X}}}$",
    "Answer: Ｘ".replace("Ｘ", "{FX}"), "{X} is correct.", "({X}) is the right answer.", "Option {X} is correct.",
    "{Y} is incorrect. {X} is correct.", "Option {Y} is tempting, but option {X} fits best. The answer is {X}.",
    "{Y} is incorrect because of the wording. {Z} is incorrect too. Therefore, {X}.",
    "The answer is not {Y}; it is {X}.", "{X}. ({Y}), ({Z}), and ({W}) are wrong.",
    "{X}. (A), (B), and (C) is correct", "Let's think step by step. {TX} fits the question. Answer: {X}",
    "Let's think step by step.\nFirst, {TY} does not fit.\nSecond, {TX} does.\nAnswer: {X}",
    "Step 1: read the question.\nStep 2: compare the options.\nThe answer is {X}.\n\nAnswer: {X}",
    "Answer: {Y}\nWait, let me reconsider.\nAnswer: {X}", "{TX}", "The answer is {TX}.", "It is {TX}, so {X}.",
    "Both {X} and {Y} look plausible.", "{X} or {Y}", "Either {X} or {Y}", "I'm not sure.", "I cannot answer that.",
    "None of the options is correct.", "All of the above.", "", "   ", "ABCD", "Dogs are mammals.",
    "A. {TA}\nB. {TB}\nC. {TC}\nD. {TD}\nThe answer is {X}.", "1. {X}", "1.{X}", "So the answer is {X}",
    "Thus, the correct option is {X}.", "Hence {X}", "Final answer: {X}", "My answer: {X}", "I choose {X}.",
    "{X}: {TX}", "[{X}]", "<think>Maybe {Y}? No.</think>{X}", "<think>{Y}</think>\nAnswer: {X}",
    "Answer : {X}", "Answer\t:\t{X}", "answer is {X}", "The answer is **{X}**.", "Answer: **{X}**",
    "The best answer is {X} because {TX}.", "Option {X}", "option {X}", "Choice {X}.", "({X}) {TX}",
    "{X}\n\nExplanation: {TX} is right while {TY} is not.", "The answer should be {X}.", "Correct answer: {X}",
)  # fmt: skip
ZH_TEMPLATES = (
    "{X}", "{X}。", "（{X}）", "{X}.", "答案：{X}", "答案:{X}", "答案是{X}", "答案为{X}", "答案为（{X}）", "答案是：{X}",  # noqa: E501
    "答案应该是{X}", "答案应选{X}", "答案选{X}", "选{X}", "选择{X}", "应该选{X}选项", "我认为应该选择{X}选项",
    "正确选项是{X}", "正确答案是{X}。", "{X}选项正确", "{X}正确", "{X}是正确的", "{X}是正确答案", "选项{X}正确",
    "{X}是对的", "{X}选项符合题意", "选项{Y}错误；选项{X}正确。", "{Y}不正确，{X}正确。", "{Y}错误，{X}对。",
    "答案：{Y} … 答案：{X}", "答案：{Y}\n不对，重新考虑。\n答案：{X}", "{X}和{Y}都正确", "{X}、{Y}均正确", "{X}或{Y}",
    "答案不是{Y}，是{X}", "因此，答案是{X}。", "所以选{X}。", "故选{X}", "综上所述，{X}", "所以答案为{X}",
    "{TX}", "答案是{TX}", "{Q}{TX}", "我认为是{TX}。", "应该是{TX}", "{TX}，所以选{X}", "因为{TY}不对，所以是{TX}",
    "无法回答", "我不知道", "以上都不对", "题目有误", "", "答案：Ｘ".replace("Ｘ", "{FX}"), "答案：（{X}）", "【{X}】",
    "答案】{X}", "答案：**{X}**", "**答案：{X}**", "解析：{TX}符合题意。答案：{X}",
    "解析：\n{Y}项错误。\n{X}项正确。\n故答案为{X}。", "The answer is {X}.", "Answer: {X}", "答：{X}", "答案\uff1a {X}",
    "选项{X}：{TX}", "{X}项", "{X}选项", "这道题选{X}", "根据题意，正确的是{X}。", "A", "B选项错误", "不选{Y}，选{X}",
    "答案不是{Y}", "<think>可能是{Y}</think>答案：{X}", "1. {X}", "本题答案为：{X}。", "显然{X}", "因此{X}", "即{X}",
    "{X}，{TX}", "答案应该是 {X}", "答案选择{X}项", "正确的选项为{X}", "该题的正确答案为{X}",
)  # fmt: skip
LETTERS = "ABCD"
FULL_WIDTH = dict(zip(LETTERS, "ＡＢＣＤ", strict=True))


@dataclass(frozen=True)
class Case:
    """One reply to one question."""

    case_id: str
    benchmark: str
    sample_id: str
    reply: str


def _fill(template: str, sample: Sample, x: str, y: str, z: str, w: str) -> str:
    texts = dict(zip(LETTERS, sample.choices, strict=True))
    return template.format(
        X=x, Y=y, Z=z, W=w, x=x.lower(), FX=FULL_WIDTH[x], TX=texts[x], TY=texts[y], Q=sample.question,
        TA=texts["A"], TB=texts["B"], TC=texts["C"], TD=texts["D"],
    )  # fmt: skip


def samples(data_dir: Path, benchmark: str, setup: str = "qwen") -> dict[str, Sample]:
    """Every sample of a benchmark (a stratified 300) under a setup, by id."""
    task = build_task(benchmark, data_dir, limit=300, setup=setup)
    return {s.id: s for s in task.samples()}


def corpus(data_dir: Path, benchmark: str, per_template: int = 6, seed: int = 20261201) -> list[Case]:
    """``per_template`` replies per template, each on its own question and letters."""
    rng = random.Random(f"{seed}-{benchmark}")
    pool = sorted(samples(data_dir, benchmark).values(), key=lambda s: s.id)
    templates = EN_TEMPLATES if benchmark == "mmlu" else ZH_TEMPLATES + EN_TEMPLATES[::4]
    cases = []
    for t, template in enumerate(templates):
        for k in range(per_template):
            sample = rng.choice(pool)
            x, y, z, w = rng.sample(LETTERS, 4)
            cases.append(Case(f"{benchmark}-{t}-{k}", benchmark, sample.id, _fill(template, sample, x, y, z, w)))
    return cases
