"""How long `orchestrate --help` and `orchestrate validate` take to start, against `python -c pass`.

A command imports what it needs when it runs, so the commands that only read a manifest or print
help must not pay for aiohttp, numpy, the tasks or the backends. Prints the median of N runs of
each, in the same run, and the ratio to the interpreter's own start.

    python benchmarks/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args()
    py = sys.executable
    base = timed([py, "-c", "pass"], args.runs)
    rows = [
        ("python -c pass", base),
        ("orchestrate --help", timed([py, "-m", "orchestrator.cli", "--help"], args.runs)),
        ("orchestrate validate", timed([py, "-m", "orchestrator.cli", "validate", "manifests/local.yaml"], args.runs)),
    ]
    for name, seconds in rows:
        print(f"{name:<24} {seconds * 1000:7.1f} ms  {seconds / base:5.2f}x python -c pass")


if __name__ == "__main__":
    main()
