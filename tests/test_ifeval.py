"""IFEval: checker families (must pass / must fail), loose variants, determinism, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.records import SampleRecord
from orchestrator.tasks.ifeval import IFEvalChecker, IFEvalTask, UnknownInstructionError, aggregate_verdicts
from orchestrator.tasks.ifeval import loose_variants as variants


@pytest.fixture(scope="module")
def checker() -> IFEvalChecker:
    return IFEvalChecker()


def verdict(checker: IFEvalChecker, iid: str, kwargs: dict[str, Any], response: str, prompt: str = "P") -> bool:
    return checker.check("k", prompt, [iid], [kwargs], response).strict[0]


LOREM = "The river runs past the old mill. Children play near the water. Evening falls slowly."

# (instruction id, kwargs, a response that must pass, a response that must fail)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("keywords:existence", {"keywords": ["mill", "river"]}, LOREM, "Nothing relevant here."),
    ("keywords:frequency", {"keyword": "water", "frequency": 2, "relation": "at least"}, "water and water", "water"),
    ("keywords:forbidden_words", {"forbidden_words": ["mill"]}, "A quiet river.", LOREM),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "zz top", "top"),
    ("language:response_language", {"language": "de"}, "Das ist ein kurzer deutscher Satz über das Wetter.", LOREM),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", LOREM),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "Only one."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, LOREM, "Too short."),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "children"},
        "Intro here.\n\nChildren play.",
        "Intro here.\n\nAdults play.",
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear you."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\n\nP.S. bye", "Hello."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* only"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nA\nSECTION 2\nB",
        "SECTION 1\nA",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1"),
    ("detectable_format:title", {}, "<<A Title>>\nText", "A Title\nText"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Only one answer."),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Say hi."},
        "Say hi. Hi there!",
        "Hi there! Say hi.",
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Done. Any other questions?",
        "Any other questions? Done.",
    ),
    ("startend:quotation", {}, '"wrapped in quotes"', "not wrapped"),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "NASA and ESA",
        "nasa and esa",
    ),
    ("change_case:english_capital", {}, "THIS IS ALL IN CAPITAL LETTERS FOR YOU.", LOREM),
    ("change_case:english_lowercase", {}, "this is all in lower case letters for you.", LOREM),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, commas."),
]


@pytest.mark.parametrize(("iid", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_checker_family(checker: IFEvalChecker, iid: str, kwargs: dict[str, Any], good: str, bad: str) -> None:
    assert verdict(checker, iid, kwargs, good) is True
    assert verdict(checker, iid, kwargs, bad) is False


def test_all_25_checkers_covered(checker: IFEvalChecker) -> None:
    assert {c[0] for c in CASES} == set(checker.registry)


def test_empty_response_fails_every_instruction(checker: IFEvalChecker) -> None:
    v = checker.check(
        "k", "P", ["punctuation:no_comma", "keywords:forbidden_words"], [{}, {"forbidden_words": ["x"]}], ""
    )
    assert v.strict == [False, False] and v.loose == [False, False]  # verdicts, not a missing entry


def test_unknown_instruction_is_an_error(checker: IFEvalChecker) -> None:
    with pytest.raises(UnknownInstructionError):
        checker.check("k", "P", ["made:up"], [{}], "text")


def test_loose_variants_are_the_official_eight() -> None:
    v = variants("Sure!\n*Body* text\nBye")
    assert v == [
        "Sure!\n*Body* text\nBye",
        "Sure!\nBody text\nBye",
        "*Body* text\nBye",
        "Sure!\n*Body* text",
        "*Body* text",
        "Body text\nBye",
        "Sure!\nBody text",
        "Body text",
    ]


def test_loose_passes_where_strict_fails(checker: IFEvalChecker) -> None:
    # A chatty first line breaks the quotation rule strictly; removing it passes loosely.
    v = checker.check("k", "P", ["startend:quotation"], [{}], 'Here you go:\n"quoted answer"')
    assert v.strict == [False] and v.loose == [True]
    # Trailing '*' markup breaks the end phrase strictly; the '*'-stripped variant passes.
    v = checker.check(
        "k", "P", ["startend:end_checker"], [{"end_phrase": "Any questions?"}], "Done. **Any questions?**"
    )
    assert v.strict == [False] and v.loose == [True]
    # Stripping '*' does not remove a forbidden word: fails in both modes.
    v = checker.check("k", "P", ["keywords:forbidden_words"], [{"forbidden_words": ["bold"]}], "**bold** move")
    assert v.strict == [False] and v.loose == [False]


def test_letter_frequency_random_letter_is_deterministic_and_recorded(checker: IFEvalChecker) -> None:
    kwargs = {"letter": "#", "let_frequency": 1, "let_relation": "at least"}
    runs = [checker.check("sample-7", "P", ["keywords:letter_frequency"], [kwargs], "abc xyz") for _ in range(3)]
    letters = {r.resolved_args[0]["letter"] for r in runs}
    assert len(letters) == 1 and letters.pop().isalpha()
    other = checker.check("sample-8", "P", ["keywords:letter_frequency"], [kwargs], "abc xyz")
    assert other.resolved_args[0]["letter"].isalpha()


def test_two_scorings_identical(data_dir: Path) -> None:
    task = IFEvalTask(data_dir)
    samples = task.samples()
    reply = "Hello World. THIS IS A TEST, with commas.\n\n* one\n* two\n\nP.S. bye"
    first = [task.score(s, reply).details for s in samples]
    second = [IFEvalTask(data_dir).score(s, reply).details for s in samples]
    assert first == second


def test_data_and_metrics(data_dir: Path) -> None:
    task = IFEvalTask(data_dir, limit=100)
    samples = task.samples()
    assert len(samples) == 100 and len(IFEvalTask(data_dir).samples()) == 541
    assert task.max_tokens >= 1280
    assert all(len(s.messages) == 1 and s.messages[0][0] == "user" for s in samples)
    rows = task.rows()
    assert all(None not in kw.values() for r in rows.values() for kw in r["kwargs"])
    records = []
    for s in samples[:20]:
        score = task.score(s, "<think>plan</think>My answer is yes.")
        assert score.details["think_stripped"] is True
        records.append(SampleRecord(id=s.id, task="ifeval", score_details=score.details))
    records.append(SampleRecord(id="failed", task="ifeval", error="HTTP 500"))
    agg = task.aggregate(records)
    details = [r.score_details or {} for r in records[:20]]
    items = [(d["instruction_id_list"], d["strict"], d["loose"]) for d in details]
    n_inst = sum(len(i[0]) for i in items)
    assert agg["n"] == 20 and agg["errors"] == 1 and agg["instructions"] == n_inst
    assert agg["accuracy"] == agg["prompt_strict"] == sum(all(i[1]) for i in items) / 20
    assert agg["instruction_loose"] == sum(sum(i[2]) for i in items) / n_inst
    assert agg["prompt_loose"] >= agg["prompt_strict"]
    assert sum(v["n"] for v in agg["per_instruction"].values()) == n_inst


def test_aggregate_empty() -> None:
    assert aggregate_verdicts([])["prompt_strict"] is None


def test_responses_file_scoring_cli(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    rows = [json.loads(line) for line in (data_dir / "ifeval" / "input_data.jsonl").read_text().splitlines()[:30]]
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "response": "my answer is yes."}) + "\n" for r in rows)
    )
    assert main(["score", "--responses", str(responses), "--task", "ifeval", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "prompt-level strict" in out and "instruction-level loose" in out
    strict = [json.loads(line) for line in (tmp_path / "eval_results_strict.jsonl").read_text().splitlines()]
    assert len(strict) == 30
    for entry, row in zip(strict, rows, strict=True):
        assert entry["key"] == row["key"] and entry["instruction_id_list"] == row["instruction_id_list"]
        assert entry["follow_all_instructions"] == all(entry["follow_instruction_list"])
        assert len(entry["follow_instruction_list"]) == len(row["instruction_id_list"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "not an ifeval prompt", "response": "x"}) + "\n")
    assert main(["score", "--responses", str(bad), "--task", "ifeval", "--data-dir", str(data_dir)]) == 2


LANG_TEXTS = [
    "The committee reviewed the proposal in detail and approved it.",
    "Das Wetter ist heute sehr schön und wir gehen im Park spazieren.",
    "今天的天气很好，我们去公园散步吧。北京是中国的首都。",
    "Москва — столица России, крупнейший город страны.",
    "THIS TEXT IS ALL IN CAPITALS, BUT IT IS STILL ENGLISH TEXT.",
    "Le chat dort sur le canapé depuis ce matin; il fait beau à Paris.",
    "東京は日本の首都です。ひらがなとカタカナ。",
    "서울은 대한민국의 수도입니다.",
    "مرحبا بكم في هذا الاختبار اللغوي القصير",
    "Xin chào, hôm nay trời đẹp quá. Ș ț ş ţ — “quotes” …",
    "Mixed: English words, deutsche Wörter, 中文字符 and NASA URLs http://x.org a@b.com",
]


def test_fastpaths_is_bit_identical() -> None:
    import random

    from langdetect import detector_factory

    from orchestrator.tasks.ifeval import fastpaths

    IFEvalChecker()  # installs the fast paths
    assert fastpaths.ORIGINAL
    detector_factory.init_factory()
    factory = detector_factory._factory
    rng = random.Random(3)
    texts = LANG_TEXTS + [" ".join(rng.sample(LANG_TEXTS, 4)) * rng.randint(1, 5) for _ in range(30)]
    for text in texts:
        fast, slow = factory.create(), factory.create()
        fast.append(text)
        slow.append(text)
        assert fast._extract_ngrams() == fastpaths.ORIGINAL["_extract_ngrams"](slow)
        fast_probs = [(p.lang, p.prob) for p in fast.get_probabilities()]
        fastpaths.ORIGINAL["_detect_block"](slow)
        slow_probs = [(p.lang, p.prob) for p in slow._sort_probability(slow.langprob)]
        assert fast_probs == slow_probs  # exact floats, not approximately
    assert detector_factory.DetectorFactory.seed == 0
