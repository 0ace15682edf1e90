"""Derive tests/data/reference_expectations.json from the references' own code, as fetched.

Every expected extraction and prompt digest that tests/test_reference_fidelity.py pins comes from
running the references' code on the corpus (tests/support/mc_corpus.py), not from ours:

- QwenLM/Qwen @ 1134e08be76f, eval/evaluate_chat_ceval.py: ``extract_answer`` (with its
  ``process_before_extraction``, ``extract_choice`` and thefuzz fallback) for C-Eval under
  ``qwen``; ``format_example`` for the C-Eval prompt;
- open-compass/opencompass @ 0.2.6, opencompass/utils/text_postprocessors.py:
  ``first_option_postprocess(text, 'ABCD')`` for MMLU under ``qwen``; @ 26d077b0805,
  configs/datasets/mmlu/mmlu_gen_a484b3.py: the MMLU prompt (its ice and prompt templates, five
  fixed dev shots, HUMAN/BOT as user/assistant turns);
- openai/simple-evals @ ee3b0318d8d1, common.py: ``normalize_response``,
  ``MULTILINGUAL_ANSWER_REGEXES`` tried in order with ``MULTILINGUAL_ANSWER_PATTERN_TEMPLATE``
  (the loop of mmlu_eval.py's ``__call__``), ``normalize_extracted_answer``;
  ``QUERY_TEMPLATE_MULTICHOICE`` for the prompt.

The files are read from raw.githubusercontent.com at those commits, or from ``--from DIR`` holding
``<owner>/<repo>/<path>`` copies (offline). Only the named functions and constants are taken from
each file (parsed, not imported: the files import torch, transformers, the OpenCompass registry).

    python scripts/derive_reference_expectations.py --data-dir ../shared/data [--from DIR] [--check]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import types
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.tasks import build_task  # noqa: E402
from tests.support.mc_corpus import corpus, samples  # noqa: E402

OUT = REPO / "tests" / "data" / "reference_expectations.json"
SOURCES = {
    "qwen": ("QwenLM/Qwen", "1134e08be76f6121ad3e4d05f853323d74755853", "eval/evaluate_chat_ceval.py"),
    "opencompass": ("open-compass/opencompass", "a62c613d3e3a2a96252b704f8887cf440b3e5b65",
                    "opencompass/utils/text_postprocessors.py"),  # tag 0.2.6
    "opencompass_mmlu": ("open-compass/opencompass", "26d077b080513b495b49aeb5794b6d0a6c32c96b",
                         "configs/datasets/mmlu/mmlu_gen_a484b3.py"),
    "simple_evals": ("openai/simple-evals", "ee3b0318d8d1d9d72755a4120879be65f7c07e9e", "common.py"),
}  # fmt: skip
DERIVED_WITH = {
    "opencompass_mmlu": "opencompass 0.2.6 opencompass/utils/text_postprocessors.py "
    "first_option_postprocess(text, 'ABCD')",
    "qwen_ceval": "QwenLM/Qwen eval/evaluate_chat_ceval.py @1134e08be76f (extract_answer), thefuzz 0.22.1",
    "simple_evals": "openai/simple-evals common.py normalize_response + MULTILINGUAL_ANSWER_REGEXES loop of "
    "mmlu_eval.py",
}


def fetch(key: str, local: Path | None) -> str:
    """A reference file's text at its pinned commit."""
    repo, commit, path = SOURCES[key]
    if local is not None:
        return (local / repo / path).read_text(encoding="utf-8")
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    with urllib.request.urlopen(url, timeout=60) as reply:
        return str(reply.read().decode("utf-8"))


def take(source: str, names: set[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute only the top-level definitions named ``names`` of a Python file in ``namespace``."""
    tree = ast.parse(source)
    keep = []
    for node in tree.body:
        name = getattr(node, "name", None)
        if isinstance(node, ast.Assign | ast.AnnAssign):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            name = getattr(target, "id", None)
        if name in names:
            if isinstance(node, ast.FunctionDef):
                node.decorator_list = []  # registries (OpenCompass's) are not loaded
            keep.append(node)
    missing = names - {getattr(n, "name", None) or getattr(getattr(n, "targets", [n])[0], "id", None) for n in keep}
    if missing:
        raise SystemExit(f"not found in the reference file: {', '.join(sorted(missing))}")
    exec(compile(ast.Module(keep, []), "<reference>", "exec"), namespace)
    return namespace


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _digest(messages: list[tuple[tuple[str, str], ...]]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(json.dumps([list(t) for t in m], ensure_ascii=False).encode())
    return h.hexdigest()


def derive(data_dir: Path, local: Path | None) -> dict[str, Any]:
    """The expectations, from the references' code."""
    import logging

    from thefuzz import process

    logging.getLogger("thefuzz").setLevel(logging.ERROR)  # its fallback on blank replies warns per call

    qwen = take(fetch("qwen", local), {"process_before_extraction", "count_substr", "extract_choice",
                                       "format_example", "extract_answer", "choices"},
                {"re": re, "process": process})  # fmt: skip
    oc = take(fetch("opencompass", local), {"first_option_postprocess"}, {"re": re})
    se = take(fetch("simple_evals", local), {"normalize_response", "normalize_extracted_answer",
                                             "MULTILINGUAL_ANSWER_PATTERN_TEMPLATE", "MULTILINGUAL_ANSWER_REGEXES",
                                             "QUERY_TEMPLATE_MULTICHOICE"}, {"re": re})  # fmt: skip

    def simple_evals(reply: str) -> str | None:
        text = se["normalize_response"](reply)
        for answer_regex in se["MULTILINGUAL_ANSWER_REGEXES"]:
            match = re.search(se["MULTILINGUAL_ANSWER_PATTERN_TEMPLATE"].format(answer_regex), text)
            if match:
                return str(se["normalize_extracted_answer"](match.group(1)))
        return None

    def row(s: Any) -> dict[str, str]:
        return {"question": s.question, **dict(zip("ABCD", s.choices, strict=True))}

    cases: dict[str, Any] = {}
    for bench in ("mmlu", "ceval"):
        pool = samples(data_dir, bench)
        for case in corpus(data_dir, bench):
            s = pool[case.sample_id]
            ours = oc["first_option_postprocess"](case.reply, "ABCD") if bench == "mmlu" else None
            qwen_pick = str(qwen["extract_answer"](case.reply, row(s))) if bench == "ceval" else (ours or None)
            cases[case.case_id] = {"qwen": qwen_pick, "sha": _sha(case.reply), "simple_evals": simple_evals(case.reply)}
    return {"cases": cases, "derived_with": DERIVED_WITH, "prompts": prompts(data_dir, local, qwen, se)}


def prompts(data_dir: Path, local: Path | None, qwen: dict[str, Any], se: dict[str, Any]) -> dict[str, str]:
    """Digests of the references' prompts for the stratified 300 samples the test renders."""
    ceval = build_task("ceval", data_dir, limit=300).samples()
    ceval_msgs = [(("system", "You are a helpful assistant."), ("user", qwen["format_example"](
        {"question": s.question, **dict(zip("ABCD", s.choices, strict=True))}))) for s in ceval]  # fmt: skip
    mmlu = build_task("mmlu", data_dir, limit=300, setup="simple-evals").samples()
    template = se["QUERY_TEMPLATE_MULTICHOICE"]
    se_msgs = [(("user", template.format(Question=s.question, **dict(zip("ABCD", s.choices, strict=True)))),)
               for s in mmlu]  # fmt: skip
    return {"ceval_qwen": _digest(ceval_msgs), "mmlu_qwen": _digest(_opencompass_mmlu(data_dir, local)),
            "mmlu_simple_evals": _digest(se_msgs)}  # fmt: skip


def _opencompass_mmlu(data_dir: Path, local: Path | None) -> list[tuple[tuple[str, str], ...]]:
    """mmlu_gen_a484b3 rendered as OpenCompass's chat path does: the ice template's HUMAN/BOT rounds
    for dev items 0-4 (FixKRetriever), then the prompt template's HUMAN round for the question."""
    stub = types.SimpleNamespace
    names = (
        "PromptTemplate",
        "FixKRetriever",
        "GenInferencer",
        "AccEvaluator",
        "MMLUDataset",
        "first_option_postprocess",
    )
    config: dict[str, Any] = dict.fromkeys(names, stub)
    source = "\n".join(line for line in fetch("opencompass_mmlu", local).splitlines() if not line.startswith("from "))
    exec(source, config)
    by_subject = {d["name"]: d["infer_cfg"] for d in config["mmlu_datasets"]}
    task = build_task("mmlu", data_dir, limit=300)
    out = []
    roles = {"HUMAN": "user", "BOT": "assistant"}
    for s in task.samples():
        cfg = by_subject[s.subject]
        dev = task._load(s.subject, "dev")[:5]
        turns: list[tuple[str, str]] = []
        for shot in dev:
            fields = {"input": shot.question, "target": shot.answer, **dict(zip("ABCD", shot.options, strict=True))}
            turns += [
                (roles[r["role"]], r["prompt"].format(**fields)) for r in cfg["ice_template"]["template"]["round"]
            ]
        fields = {"input": s.question, **dict(zip("ABCD", s.choices, strict=True))}
        turns += [(roles[r["role"]], r["prompt"].format(**fields)) for r in cfg["prompt_template"]["template"]["round"]]
        out.append(tuple(turns))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--from", dest="local", help="a folder of <owner>/<repo>/<path> copies instead of GitHub")
    ap.add_argument("--check", action="store_true", help="compare with the pinned file instead of writing it")
    args = ap.parse_args()
    derived = derive(Path(args.data_dir), Path(args.local) if args.local else None)
    text = json.dumps(derived, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    if args.check:
        pinned = json.loads(OUT.read_text(encoding="utf-8"))
        differ = [k for k in pinned["cases"] if pinned["cases"][k] != derived["cases"].get(k)]
        bad = {k: (pinned["prompts"][k], derived["prompts"][k]) for k in pinned["prompts"]
               if pinned["prompts"][k] != derived["prompts"][k]}  # fmt: skip
        print(f"cases: {len(derived['cases'])}, differing: {len(differ)} {differ[:5]}; prompts differing: {bad}")
        raise SystemExit(1 if differ or bad or set(pinned["cases"]) != set(derived["cases"]) else 0)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}: {len(derived['cases'])} cases")


if __name__ == "__main__":
    main()
