"""Stored runs for the re-render test: run directories written once by this script, kept in
``tests/data/runs/`` with the reports they rendered to (``golden/``).

The records are synthetic but shaped like a real run's (seeded): a model at BF16 with three
quantizations and a noise-floor repeat, over MMLU, C-Eval and IFEval, with top-k logprobs keyed by
text (the path whose sums once depended on the hash seed) and raw timings; and a one-task run.
``tests/test_stored_runs.py`` re-renders every stored run and compares it byte for byte with its
golden reports, under several hash seeds.

    python -m tests.support.stored_runs            # write the runs (only when adding one)
    python -m tests.support.stored_runs --golden   # re-render the golden reports after a fix
                                                   # that changes them (say which in the commit)
"""

from __future__ import annotations

import argparse
import math
import random
import re
import shutil
from pathlib import Path
from typing import Any

from orchestrator.manifest import parse_manifest
from orchestrator.records import RECORD_SCHEMA, SampleRecord, Timing
from orchestrator.store import RunStore

RUNS = Path(__file__).resolve().parents[1] / "data" / "stored"
GOLDEN = ("report.json", "report.md", "report.html")
# The page's figures are PNGs whose bytes follow matplotlib's and FreeType's versions: the golden
# page keeps every byte but theirs (the hash-seed check compares them whole).
IMAGE = re.compile(rb"data:image/png;base64,[A-Za-z0-9+/=]+")


def without_images(page: bytes) -> bytes:
    """A report page with each embedded PNG's data left out."""
    return IMAGE.sub(b"data:image/png;base64,", page)


MMLU_SUBJECTS = ("abstract_algebra", "anatomy", "astronomy", "college_biology", "marketing")
CEVAL_SUBJECTS = ("computer_network", "college_economics", "law", "modern_chinese_history", "advanced_mathematics")
WORDS = ("the", " answer", " is", " A", " B", " C", " D", ".", " because", " 由于", "答案", "是")


def _positions(rng: random.Random, n: int, noise: float) -> list[list[Any]]:
    """n generated positions of top-5 logprobs by text, perturbed by ``noise``."""
    out: list[list[Any]] = []
    for _ in range(n):
        words = rng.sample(WORDS, 5)
        weights = sorted((rng.random() + noise * rng.random() for _ in words), reverse=True)
        total = sum(weights) * 1.25  # a fifth of the mass left unlisted
        alts = [[w, round(math.log(x / total), 6)] for w, x in zip(words, weights, strict=True)]
        out.append([words[0], alts[0][1], alts])
    return out


def _mc(rng: random.Random, store: RunStore, target: str, task: str, subjects: tuple[str, ...], skill: float,
        seed_rng: random.Random, noise: float, logprobs: bool) -> None:  # fmt: skip
    writer = store.writer(target, task, "qwen@2")
    t0 = 1_800_000_000.0
    for i in range(24):
        subject = subjects[i % len(subjects)]
        gold = "ABCD"[i % 4]
        base = seed_rng.random()  # the same per sample for every target: answers correlate
        right = base < skill + 0.1 * (rng.random() - 0.5)
        unparsed = not right and rng.random() < 0.1
        answer = None if unparsed else gold if right else "ABCD"[(i + 1) % 4]
        reply = "I cannot say." if unparsed else f"The answer is {answer}."
        tokens = 6 + rng.randrange(4)
        ttft = 0.05 + 0.02 * rng.random()
        chunks = tuple(round(ttft + k * (0.012 + 0.004 * rng.random()), 6) for k in range(tokens))
        writer.write(
            SampleRecord(
                id=f"{task}/{subject}/{i}", task=task, subject=subject, target=target, gold=gold,
                request={"messages": [{"role": "user", "content": f"Question {i} of {subject}"}], "temperature": 0},
                reply=reply, finish_reason="stop", prompt_tokens=40 + i, completion_tokens=tokens,
                token_source="usage", extracted=answer, rule="unparsed" if unparsed else "answer_is",
                correct=bool(right and not unparsed), attempts=1, prompt_digest=f"{task}{i:04d}",
                timing=Timing(round(t0 + i * 0.05, 6), round(chunks[-1] + 0.001, 6), round(ttft, 6), chunks),
                logprobs=_positions(random.Random(f"{task}{i}{noise}"), 6, noise) if logprobs else None,
            )
        )  # fmt: skip


def _ifeval(rng: random.Random, store: RunStore, target: str, skill: float, seed_rng: random.Random) -> None:
    writer = store.writer(target, "ifeval", "qwen@2")
    for i in range(20):
        k = 1 + i % 3
        strict = [seed_rng.random() < skill + 0.1 * (rng.random() - 0.5) for _ in range(k)]
        loose = [s or rng.random() < 0.3 for s in strict]
        details = {"instruction_id_list": [f"keywords:k{j}" for j in range(k)], "strict": strict, "loose": loose}
        writer.write(
            SampleRecord(
                id=f"ifeval/{i}", task="ifeval", subject="ifeval", target=target, gold=None, reply=f"reply {i}",
                finish_reason="stop", completion_tokens=50 + i, token_source="usage", correct=all(strict),
                attempts=1, prompt_digest=f"if{i:04d}", score_details=details,
                timing=Timing(1_800_000_100.0 + i, 0.9, 0.05, ()),
            )
        )  # fmt: skip


def _target(name: str, quant: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": "Qwen/Qwen2-7B-Instruct", "quantization": quant, "backend": "vllm",
            "url": "http://h:1", **extra}  # fmt: skip


def _write_run(name: str, targets: list[tuple[dict[str, Any], float, float]], tasks: tuple[str, ...]) -> None:
    shutil.rmtree(RUNS / name, ignore_errors=True)
    run = RUNS / name / "run"
    manifest = parse_manifest(
        {
            "run": {"name": name, "output_dir": str(RUNS)},
            "generation": {"logprobs": 5},
            "tasks": {task: {} for task in tasks},
            "targets": [t for t, _, _ in targets],
        }
    )
    store = RunStore(run)
    samples = {"mmlu": 24, "ceval": 24, "ifeval": 20}
    store.write_meta(
        {
            "run_id": name,
            "manifest": manifest.to_dict(),
            "setup": {"name": "qwen", "version": "qwen@2"},
            "samples": {t: samples[t] for t in tasks},
            "record_schema": RECORD_SCHEMA,
            "servers": {t["name"]: {"version": "0.6.3", "served_model": t["model"]} for t, _, _ in targets},
        }
    )
    for target, skill, noise in targets:
        rng = random.Random(target["name"])
        for task, subjects in (("mmlu", MMLU_SUBJECTS), ("ceval", CEVAL_SUBJECTS)):
            if task in tasks:
                _mc(rng, store, target["name"], task, subjects, skill, random.Random(task), noise, True)
        if "ifeval" in tasks:
            _ifeval(rng, store, target["name"], skill, random.Random("ifeval"))
    store.close()


def write_runs() -> None:
    """The stored runs (their records and run.json); run once, when a run is added."""
    _write_run(
        "matrix",
        [
            (_target("bf16", "BF16"), 0.7, 0.0),
            (_target("bf16-repeat", "BF16", noise_of="bf16"), 0.7, 0.0),
            (_target("int8", "GPTQ-Int8"), 0.68, 0.05),
            (_target("int4", "GPTQ-Int4"), 0.55, 0.4),
        ],
        ("mmlu", "ceval", "ifeval"),
    )
    _write_run("one-task", [(_target("bf16", "BF16"), 0.7, 0.0), (_target("awq", "AWQ"), 0.6, 0.3)], ("mmlu",))


def render_golden() -> None:
    """Each stored run's reports, rendered by the current code, as the golden copies."""
    from orchestrator.report import write_report

    for run in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        work = run / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(run / "run", work)
        write_report(work)
        golden = run / "golden"
        golden.mkdir(exist_ok=True)
        for name in GOLDEN:
            data = (work / name).read_bytes()
            (golden / name).write_bytes(without_images(data) if name.endswith(".html") else data)
        shutil.rmtree(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", action="store_true", help="only re-render the golden reports")
    args = ap.parse_args()
    if not args.golden:
        write_runs()
    render_golden()


if __name__ == "__main__":
    main()
