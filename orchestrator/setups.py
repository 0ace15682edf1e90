"""The evaluation protocols ("setups"), each defined once: name, version, and what it reproduces.

A setup's name is a promise: ``qwen`` and ``simple-evals`` reproduce written-down references item
for item (prompts, extraction, aggregation); an extractor better than the references lives in its
own setup, ``robust``, never under a reference's name. The version changes whenever anything of a
protocol changes; the store keys include it, so results of two protocols never mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setup:
    """One evaluation protocol."""

    name: str
    version: str
    reference: str  # what it reproduces (for run.json, reports and the README)


SETUPS = {
    s.name: s
    for s in (
        Setup(
            "qwen",
            "qwen@2",
            "Qwen2-Instruct's published figures: MMLU = OpenCompass configs/datasets/mmlu/mmlu_gen_a484b3.py "
            "(commit 26d077b0805, 5-shot chat turns, first_option_postprocess of opencompass 0.2.6); C-Eval = "
            "QwenLM/Qwen eval/evaluate_chat_ceval.py (commit 1134e08be76f, 0-shot, its extraction and fuzzy "
            "fallback, macro average); IFEval = google-research instruction_following_eval",
        ),
        Setup(
            "simple-evals",
            "simple-evals@2",
            "openai/simple-evals mmlu_eval.py + common.py: 0-shot chain-of-thought template, normalize_response, "
            "MULTILINGUAL_ANSWER_REGEXES in order, first match, normalize_extracted_answer (C-Eval: the same)",
        ),
        Setup(
            "robust",
            "robust@1",
            "the qwen setup's prompts with the orchestrator's own extractor: last explicit answer wins, negations "
            "and conclusions understood, normalised markdown/LaTeX/full-width letters, ambiguous replies unparsed",
        ),
    )
}
SETUP_VERSIONS = {name: s.version for name, s in SETUPS.items()}


# Before versions were part of the file names, runs kept the bare name.
_LEGACY_KEYS = {"qwen@1": "qwen", "simple-evals@1": "simple-evals"}


def store_key(version: str) -> str:
    """The samples-file key of a setup version (``qwen@2``; ``qwen`` for the runs of qwen@1)."""
    return _LEGACY_KEYS.get(version, version)


def run_setup_version(meta: Any) -> str:
    """The setup version a run was made with, as its run.json says (the current one if it does
    not say: every run.json since setups existed names its version); ``meta``: run.json's data or
    ``run_meta.RunMeta``."""
    setup = meta.get("setup") or {}
    name = setup.get("name") or meta.get("manifest")["run"]["setup"]
    return str(setup.get("version") or SETUP_VERSIONS[name])
