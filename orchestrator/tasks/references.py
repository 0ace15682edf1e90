"""The reference protocols' answer extraction, reproduced item for item.

Each function returns ``(letter or None, rule)``: the letter the reference would score, and which
of its rules decided (``unparsed`` when the reference itself finds nothing). The regular
expressions are the references' own, character for character, and so are their quirks (noted
where they matter); tests/test_reference_fidelity.py checks every function against the reference
run as an oracle on a corpus of several hundred replies.

- ``qwen_ceval``: QwenLM/Qwen ``eval/evaluate_chat_ceval.py`` (commit 1134e08be76f), the script
  Qwen's maintainers name for the Qwen2-Instruct C-Eval figures (QwenLM/Qwen2 issue #700,
  2024-06-25): ``process_before_extraction``, a four-regex cascade, then a fuzzy match of the whole
  reply against the option texts (thefuzz ``process.extractOne``) that always returns a letter.
- ``opencompass_first_option``: OpenCompass ``first_option_postprocess(text, 'ABCD')``, the
  post-processor of ``configs/datasets/mmlu/mmlu_gen_a484b3.py``, the MMLU config the same comment
  names (commit 26d077b0805); its pattern list as released in opencompass 0.2.6 (2024-07-05, the
  first release after that commit).
- ``simple_evals``: openai/simple-evals ``mmlu_eval.py`` with ``common.py``'s
  ``normalize_response``, ``MULTILINGUAL_ANSWER_REGEXES`` tried in order with
  ``MULTILINGUAL_ANSWER_PATTERN_TEMPLATE``, the first ``re.search`` match, and
  ``normalize_extracted_answer``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

LETTERS = ("A", "B", "C", "D")

# ---------------------------------------------------------------------------------------------
# Qwen's C-Eval script
# ---------------------------------------------------------------------------------------------
QWEN_CEVAL_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # 答案是A | 选项是A | 应该选A选项
    (
        "answer_phrase",
        re.compile(
            r"(?:(?:选|选择|选定)|(?:(?:答案|选项)(?![^ABCD]{0,10}?(?:不|非)[^ABCD]{0,10}?(?:是|为|：|:|】))"
            r"[^ABCD]{0,10}?(?:是|为|：|:|】))[^ABCD]{0,10}?)(A|B|C|D)(?:选项)?(?:\)|。|\.|，|,|．|、|A|B|C|D|$)"
        ),
    ),
    # A选项正确 | A选项符合题意
    (
        "correct_phrase",
        re.compile(
            r"(A|B|C|D)(?:选?项)?(?![^ABCD]{0,4}?(?:不|非)[^ABCD]{0,4}?(?:正确|对|符合))[^ABCD]{0,4}?(?:正确|对|符合)"
        ),
    ),
    # 直接输出 A
    ("leading_letter", re.compile(r"^(A|B|C|D)(?:。|\.|，|,|．|$)")),
    # 获取第一个出现的字母
    ("first_letter", re.compile(r"(?<![a-zA-Z])(A|B|C|D)(?![a-zA-Z=])")),
)


def qwen_ceval_prompt(question: str, options: Sequence[str]) -> str:
    """The user turn of Qwen's C-Eval script: the question, a blank line, one line per option
    (each ending in a newline), no instruction."""
    return question + "\n\n" + "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, options, strict=True))


QWEN_SYSTEM_PROMPT = "You are a helpful assistant."  # Qwen's model.chat default, and Qwen2's template's


def _qwen_before_extraction(reply: str, question: str, options: Sequence[str]) -> str:
    """The script's process_before_extraction: the question's last clause becomes 答案是, the
    text after its blank is dropped, and every option's text (longest first) becomes its letter."""
    split = question.rstrip("。").split("。")[-1].split("_")
    if len(split[0].strip()) > 4:
        reply = reply.replace(split[0], "答案是")
    if len(split[-1].strip()) > 4:
        reply = reply.replace(split[-1], "")
    # sorted() is stable: among options of equal length the earlier letter is replaced first.
    for letter, text in sorted(zip(LETTERS, options, strict=True), key=lambda kv: len(kv[1]), reverse=True):
        reply = reply.replace(text.rstrip("。"), letter)
    return reply


@functools.lru_cache(maxsize=1)
def _fuzzy() -> object:
    import logging

    from thefuzz import process

    # It warns on every reply its processor empties (a blank reply): the record says "fuzzy_option".
    logging.getLogger("thefuzz").setLevel(logging.ERROR)
    return process


def qwen_ceval(reply: str, question: str, options: Sequence[str]) -> tuple[str, str]:
    """Qwen's extract_answer: never abstains (the fuzzy fallback always picks an option)."""
    text = _qwen_before_extraction(reply, question, options)
    for name, pattern in QWEN_CEVAL_RULES:
        m = pattern.search(text)
        if m:
            return m.group(1), name
    choices = list(options)
    best = _fuzzy().extractOne(text, choices)  # type: ignore[attr-defined]
    return LETTERS[choices.index(best[0])], "fuzzy_option"


# ---------------------------------------------------------------------------------------------
# OpenCompass first_option_postprocess (opencompass 0.2.6)
# ---------------------------------------------------------------------------------------------
def _opencompass_patterns(options: str) -> tuple[re.Pattern[str], ...]:
    o = options
    patterns = [
        f"答案是?\\s*([{o}])",
        f"答案是?\\s*：\\s*([{o}])",
        f"答案是?\\s*:\\s*([{o}])",
        f"答案应该?是\\s*([{o}])",
        f"答案应该?选\\s*([{o}])",
        f"答案为\\s*([{o}])",
        f"答案选\\s*([{o}])",
        f"选择?\\s*([{o}])",
        # A missing comma in the reference joins these two patterns into one: kept, as released.
        f"故选?\\s*([{o}])只有选?项?\\s?([{o}])\\s?是?对",
        f"只有选?项?\\s?([{o}])\\s?是?错",
        f"只有选?项?\\s?([{o}])\\s?不?正确",
        f"只有选?项?\\s?([{o}])\\s?错误",
        f"说法不?对选?项?的?是\\s?([{o}])",
        f"说法不?正确选?项?的?是\\s?([{o}])",
        f"说法错误选?项?的?是\\s?([{o}])",
        f"([{o}])\\s?是正确的",
        f"([{o}])\\s?是正确答案",
        f"选项\\s?([{o}])\\s?正确",
        f"所以答\\s?([{o}])",
        f"所以\\s?([{o}][.。$]?$)",
        f"所有\\s?([{o}][.。$]?$)",
        f"[\\s，：:,]([{o}])[。，,\\.]?$",
        f"[\\s，,：:][故即]([{o}])[。\\.]?$",
        f"[\\s，,：:]因此([{o}])[。\\.]?$",
        f"[是为。]\\s?([{o}])[。\\.]?$",
        f"因此\\s?([{o}])[。\\.]?$",
        f"显然\\s?([{o}])[。\\.]?$",
        "答案是\\s?(\\S+)(?:。|$)",
        "答案应该是\\s?(\\S+)(?:。|$)",
        "答案为\\s?(\\S+)(?:。|$)",
        f"[Tt]he answer is:?\\s+\\(?([{o}])\\)?",
        f"[Tt]he answer is option:?\\s+\\(?([{o}])\\)?",
        f"[Tt]he correct answer is:?\\s+\\(?([{o}])\\)?",
        f"[Tt]he correct answer is option:?\\s+\\(?([{o}])\\)?",
        f"[Tt]he answer to the question is:?\\s+\\(?([{o}])\\)?",
        f"^选项\\s?([{o}])",
        f"^([{o}])\\s?选?项",
        f"(\\s|^)[{o}][\\s。，,：:\\.$]",
        "1.\\s?(.*?)$",
        f"1.\\s?([{o}])[.。$]?$",
        # the "cushion" patterns
        f"([{o}]):",
        f"([{o}])",
    ]
    return tuple(re.compile(p, re.DOTALL) for p in patterns)


OPENCOMPASS_PATTERNS = _opencompass_patterns("ABCD")


def opencompass_first_option(reply: str, options: str = "ABCD") -> tuple[str | None, str]:
    """The first pattern that matches decides; the letter is the first *option* (in options
    order, not text order) that occurs anywhere in the whole match."""
    patterns = OPENCOMPASS_PATTERNS if options == "ABCD" else _opencompass_patterns(options)
    for i, pattern in enumerate(patterns):
        m = pattern.search(reply)
        if m:
            matched = m.group(0)
            for letter in options:
                if letter in matched:
                    return letter, f"opencompass_pattern_{i}"
            return None, f"opencompass_pattern_{i}"  # matched, but holds no option: '' in OpenCompass
    return None, "unparsed"


# ---------------------------------------------------------------------------------------------
# openai/simple-evals
# ---------------------------------------------------------------------------------------------
SIMPLE_EVALS_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{Question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
_SIMPLE_EVALS_ANSWER = "(?i){}[ \t]*([A-D]|[أ-د]|[অ]|[ব]|[ড]|[ঢ]|[Ａ]|[Ｂ]|[Ｃ]|[Ｄ])"
SIMPLE_EVALS_ANSWER_REGEXES = (
    r"Answer\s*:",
    # The reference's second entry carries a "Korean invisible character" that its published text
    # does not show; written here as the first entry, it can only differ on a reply holding it.
    r"Answer\s*:",
    r"উত্তর\s*:",
    r"उत्तर\s*:",
    r"উত্তরঃ",
    r"উত্তর\s*:",
    r"Antwort\s*:",
    r"답변\s*:",
    r"정답\s*:",
    r"답\s*:",
    r"答案\s*：",
    r"答案\s*:",
    r"答\s*：",
    r"答\s*:",
    r"答复\s*：",
    r"答曰\s*：",
    r"الإجابة:",
    r"الجواب:",
    r"إجابة:",
    r"الإجابة النهائية:",
    r"الإجابة الصحيحة:",
    r"الإجابة الصحيحة هي:",
    r"الإجابة هي:",
    r"الجواب النهائي:",
    r"Respuesta\s*:",
    r"Risposta\s*:",
    r"答え\s*:",
    r"答え\s*：",
    r"回答\s*:",
    r"回答\s*：",
    r"解答\s*:",
    r"Jawaban\s*:",
    r"Réponse\s*:",
    r"Resposta\s*:",
    r"Jibu\s*:",
    r"Idahun\s*:",
    r"Ìdáhùn\s*:",
    r"Idáhùn\s*:",
    r"Àmọ̀nà\s*:",
    r"Àdáhùn\s*:",
    r"Ànúgọ\s*:",
    r"Àṣàyàn\s*:",
)
_SIMPLE_EVALS_COMPILED = tuple(re.compile(_SIMPLE_EVALS_ANSWER.format(r)) for r in SIMPLE_EVALS_ANSWER_REGEXES)

# normalize_response: markdown and LaTeX that would hide "Answer: X", removed in this order.
_SIMPLE_EVALS_STRIP = (
    "**", "$\\boxed{", "}$", "\\$", "$\\text{", "$", "\\mathrm{", "\\{", "\\text", "\\(", "\\mathbf{", "{", "\\boxed",
)  # fmt: skip
# normalize_extracted_answer: Arabic, Bengali and full-width letters to A-D.
_SIMPLE_EVALS_LETTERS = (
    ("أ", " A"), ("ب", " B"), ("ج", " C"), ("د", " D"),
    ("অ", " A"), ("ব", " B"), ("ড", " C"), ("ঢ", " D"),
    ("Ａ", " A"), ("Ｂ", " B"), ("Ｃ", " C"), ("Ｄ", " D"),
)  # fmt: skip


def simple_evals(reply: str) -> tuple[str | None, str]:
    """The first regex of the list with a match decides, at its first match in the text."""
    text = reply
    for s in _SIMPLE_EVALS_STRIP:
        text = text.replace(s, "")
    for i, pattern in enumerate(_SIMPLE_EVALS_COMPILED):
        m = pattern.search(text)
        if m:
            letter = m.group(1)
            for src, dst in _SIMPLE_EVALS_LETTERS:
                letter = letter.replace(src, dst)
            return letter.strip(), "answer_line" if i == 0 else f"answer_line_{i}"
    return None, "unparsed"
