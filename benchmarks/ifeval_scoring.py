"""IFEval scoring speed: 541 replies scored on one core (strict + loose, all instructions).

Replies are synthetic but realistic in size (about 300 words, paragraphs, a list, a postscript),
because checker cost grows with reply length. One-time start-up (importing the checkers, loading
langdetect's profiles and the Punkt model) is printed separately from the scoring itself.

Usage: python benchmarks/ifeval_scoring.py [--data-dir ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import langdetect

from orchestrator.tasks.ifeval import IFEvalTask, fastpaths

WORDS = [
    "the",
    "river",
    "mill",
    "children",
    "water",
    "evening",
    "light",
    "market",
    "city",
    "history",
    "science",
    "people",
    "music",
    "design",
    "system",
    "report",
    "summary",
    "travel",
    "journey",
    "planning",
    "budget",
    "family",
    "garden",
    "winter",
    "summer",
    "language",
    "culture",
]


def reply(rng: random.Random) -> str:
    paragraphs = []
    for _ in range(4):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(8, 16))).capitalize() + "." for _ in range(5)]
        paragraphs.append(" ".join(sentences))
    bullets = "\n".join(f"* {' '.join(rng.choices(WORDS, k=5))}" for _ in range(3))
    return "\n\n".join([*paragraphs, bullets, "P.S. " + " ".join(rng.choices(WORDS, k=6))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ORCHESTRATOR_DATA_DIR", default)))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    t0 = time.perf_counter()
    task = IFEvalTask(args.data_dir)
    samples = task.samples()
    rng = random.Random(0)
    replies = [reply(rng) for _ in samples]
    # One-time start-up: checkers imported, langdetect's 55 profiles and the Punkt model loaded.
    task.score(samples[0], replies[0])
    langdetect.detect("warm up the language profiles")
    task.checker.check("warm", "P", ["length_constraints:number_sentences"], [{"num_sentences": 1}], "One. Two.")
    startup = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeat):
        # Cold caches each run: no memoised answer carries over from the previous run.
        fastpaths.clear_caches()
        t = time.perf_counter()
        for s, r in zip(samples, replies, strict=True):
            task.score(s, r)
        runs.append(time.perf_counter() - t)
    words = statistics.mean(len(r.split()) for r in replies)
    print(f"IFEval scoring, {len(samples)} replies (~{words:.0f} words each), one core")
    print(f"start-up (imports, langdetect profiles, punkt): {startup:.2f} s")
    print(f"scoring: median {statistics.median(runs):.2f} s over {args.repeat} runs (min {min(runs):.2f} s)")


if __name__ == "__main__":
    main()
