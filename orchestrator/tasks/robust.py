"""The ``robust`` setup's extractor: what a careful reader takes as the answer.

The reference extractors (orchestrator/tasks/references.py) take the first pattern that matches,
so a bare mention ("Option A is tempting, but … The answer is B"), a rejected option ("The answer
is not B; it is D", "选项D错误…；选项A正确") or an earlier draft ("答案：A … 答案：C") can decide.
Here, in order, the first rule that finds an answer wins:

1. ``answer_phrase``  the *last* explicit statement of the answer ("the answer is B", "Answer: C",
   "答案：D", "选B", "正确选项是A"), skipping negated ones ("is not B", "不是B");
2. ``conclusion``     the last "Therefore / Thus / So / Hence / 因此 / 所以 / 故 …, B";
3. ``leading_letter`` a reply that starts with the letter and a separator ("B", "B.", "(B) …", "D. …");
4. ``correct_phrase`` the one letter called correct ("C is correct", "B选项正确"), negated ones
   ("A is incorrect", "D错误", "C不正确") excluded; two different letters called correct: ambiguous;
5. ``final_letter``   a reply ending in a lone letter, every other letter it names ruled out
   ("The answer is not B; it is D.");
6. ``only_letter``    the only standalone letter in the reply;
7. ``option_text``    the one option whose text the reply quotes (the longest, if one contains another);
otherwise ``unparsed`` (refusals, replies naming several options, or none): scored wrong, and
counted apart in the report.

Before the rules: ``<think>`` blocks are dropped; markdown emphasis, ``$…$``, ``\\boxed{}`` and
``\\text{}`` are unwrapped; full-width letters and brackets become ASCII.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FULL_WIDTH = str.maketrans("ＡＢＣＤ（）：，。．", "ABCD():,..")
_WRAPPERS = re.compile(r"\\(?:boxed|text|mathrm|mathbf)\{([^{}]*)\}")
_L = r"\(?\[?(?P<letter>[ABCD])\)?\]?(?![A-Za-z0-9])"

_ANSWER_EN = re.compile(
    r"(?i:\b(?:final\s+)?answer|correct\s+(?:answer|option|choice)|right\s+(?:answer|option)|best\s+(?:answer|option)"
    r"|\bI\s+(?:choose|pick|select)|\boption\s+to\s+choose)"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be))?(?P<neg>\s+not)?\s*[:：]?\s*(?i:option\s*|choice\s*)?" + _L
)
_ANSWER_ZH = re.compile(
    r"(?:答案|正确答案|正确选项|最终答案|应选|故选|选择|选)\s*(?P<neg>不是|不选|并非|不)?\s*(?:应该|应)?\s*(?:是|为|选)?\s*[:：]?\s*"
    r"[【\[]?(?:选项)?" + _L
)
_CONCLUSION = re.compile(
    r"(?i:\b(?:therefore|thus|so|hence|consequently)\b|因此|所以|故|综上)[,，:：\s]*(?:(?i:the\s+answer\s+is|it\s+is|"
    r"we\s+(?:choose|get))\s*)?(?:(?i:option)\s*)?(?:选项?|答案[是为]?)?\s*" + _L
)
_LEADING = re.compile(r"^\s*[\(\[【]?([ABCD])(?:[\)\]】.:,、]|\s*$)")
_CORRECT = re.compile(
    r"(?<![A-Za-z])" + r"\(?([ABCD])\)?\s*(?:选项|项)?\s*(?P<verdict>(?i:is\s+(?:the\s+)?(?:correct|right|true)|"
    r"is\s+(?:in)?correct|is\s+wrong|is\s+false|is\s+not\s+(?:correct|right))|不正确|错误|不对|错|正确|对的|对|符合)"
)
_FINAL = re.compile(r"(?<![A-Za-z])\(?([ABCD])\)?\s*[.!。]?\s*$")
_STANDALONE = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")


def normalize(reply: str) -> str:
    """The reply without think blocks and formatting that hides a letter."""
    text = THINK_BLOCK.sub("", reply).translate(_FULL_WIDTH)
    for _ in range(3):  # nested \boxed{\text{B}}
        text = _WRAPPERS.sub(r"\1", text)
    return text.replace("**", "").replace("$", "").replace("__", "").strip()


def _last_positive(pattern: re.Pattern[str], text: str) -> str | None:
    found = [m for m in pattern.finditer(text) if not (m.groupdict().get("neg") or "").strip()]
    return found[-1].group("letter") if found else None


def robust_extract(reply: str, options: Sequence[str] | None = None) -> tuple[str | None, str]:
    """(letter or None, rule) for one reply; see the module docstring for the rules."""
    text = normalize(reply)
    if not text:
        return None, "unparsed"
    for rule, pattern in (("answer_phrase", _ANSWER_EN), ("answer_phrase", _ANSWER_ZH)):
        letter = _last_positive(pattern, text)
        if letter is not None:
            return letter, rule
    conclusions = list(_CONCLUSION.finditer(text))
    if conclusions:
        return conclusions[-1].group("letter"), "conclusion"
    m = _LEADING.match(text)
    if m:
        return m.group(1), "leading_letter"
    verdicts = [(m.group(1), m.group("verdict").lower()) for m in _CORRECT.finditer(text)]
    positive = {
        letter
        for letter, v in verdicts
        if not any(neg in v for neg in ("incorrect", "wrong", "false", "not", "不", "错"))
    }
    if len(positive) == 1:
        return positive.pop(), "correct_phrase"
    if len(positive) > 1:
        return None, "unparsed"  # several options called correct: ambiguous
    letters = {m.group(1) for m in _STANDALONE.finditer(text)}
    # Letters the reply rules out ("A is incorrect", "答案不是A", "the answer is not B").
    negated = {letter for letter, v in verdicts if letter not in positive}
    for pattern in (_ANSWER_EN, _ANSWER_ZH):
        negated |= {m.group("letter") for m in pattern.finditer(text) if (m.group("neg") or "").strip()}
    m = _FINAL.search(text)
    if m and not letters - negated - {m.group(1)}:
        return m.group(1), "final_letter"  # the reply ends on it, and every other letter is ruled out
    if len(letters) == 1:
        return letters.pop(), "only_letter"
    if options is not None and not letters:
        quoted = [(len(o.strip()), i) for i, o in enumerate(options) if o.strip() and o.strip() in text]
        if quoted:
            longest = max(quoted)
            if sum(1 for n, _ in quoted if n == longest[0]) == 1:
                return "ABCD"[longest[1]], "option_text"
    return None, "unparsed"
