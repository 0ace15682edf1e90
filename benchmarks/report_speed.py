"""Report speed: the full report (statistics and figures) of a large synthetic run, timed.

16 targets (4 models x BF16/GPTQ-Int8/GPTQ-Int4/AWQ) x full MMLU (14,042) + C-Eval val (1,346) +
IFEval (541): 254,864 records, written to a temporary run directory first (not timed). Then
`write_report` (reading the records, every interval and paired comparison, report.json/md/html
with all figures) is timed, and the peak RSS
of the process is printed. Goal on the 2-core machine: under 10 s and under 1 GB.

Usage: python benchmarks/report_speed.py [--targets 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.manifest import parse_manifest
from orchestrator.records import RECORD_SCHEMA, SampleRecord, Timing
from orchestrator.report import write_report
from orchestrator.store import RunStore

SIZES = {"mmlu": (14042, 57), "ceval": (1346, 52), "ifeval": (541, 25)}  # samples, subjects
QUANTS = (("BF16", 0.0), ("GPTQ-Int8", 0.01), ("GPTQ-Int4", 0.03), ("AWQ", 0.025))


def build_run(root: Path, n_targets: int, seed: int) -> Path:
    rng = random.Random(seed)
    models = [f"Qwen2-{size}-Instruct" for size in ("72B", "7B", "1.5B", "0.5B")]
    targets = [
        {"name": f"m{i // 4}-{QUANTS[i % 4][0].lower()}", "model": models[i // 4 % 4], "quantization": QUANTS[i % 4][0],
         "backend": "vllm", "url": "http://127.0.0.1:8000"}
        for i in range(n_targets)
    ]  # fmt: skip
    manifest = parse_manifest(
        {"run": {"name": "speed", "output_dir": str(root)}, "tasks": {t: {} for t in SIZES}, "targets": targets}
    )
    run = root / "speed"
    store = RunStore(run)
    store.write_meta(
        {"run_id": "speed", "manifest": manifest.to_dict(), "setup": {"name": "qwen", "version": "qwen@2"},
         "samples": {t: n for t, (n, _) in SIZES.items()}, "record_schema": RECORD_SCHEMA}
    )  # fmt: skip
    # Each sample's difficulty is shared by every target, as with real checkpoints of one model.
    difficulty = {t: [rng.random() for _ in range(n)] for t, (n, _) in SIZES.items()}
    clock = 1.7e9
    for i, t in enumerate(targets):
        cost = QUANTS[i % 4][1]
        for task, (n, subjects) in SIZES.items():
            writer = store.writer(t["name"], task, "qwen@2")
            for j in range(n):
                right = difficulty[task][j] > 0.35 + cost + rng.gauss(0, 0.05)
                letter = "A" if right else rng.choice("BCD")
                details = None
                if task == "ifeval":
                    k = 1 + j % 3
                    strict = [right or rng.random() < 0.5 for _ in range(k)]
                    details = {"instruction_id_list": [f"g{j % subjects}:x"] * k, "strict": strict, "loose": strict}
                    right = all(strict)
                clock += 0.01
                writer.write(
                    SampleRecord(
                        id=f"{task}/{j}", task=task, subject=f"s{j % subjects}", prompt_digest="d", gold="A",
                        target=t["name"], setup="qwen@2", reply=letter, extracted=None if details else letter,
                        rule="r", correct=right, score_details=details, finish_reason="stop", completion_tokens=3,
                        token_source="usage", token_counts={"usage": 3}, attempts=1,
                        timing=Timing(wall_send=clock, e2e=0.05, ttft=0.02, chunks=(0.02, 0.035, 0.05)),
                    )
                )  # fmt: skip
    store.close()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)  # the child that writes the run
    args = ap.parse_args()
    if args.generate:
        build_run(Path(args.generate), args.targets, args.seed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # Written by a child process, so that the peak RSS below is the report's alone.
        cmd = [sys.executable, __file__, "--generate", tmp, "--targets", str(args.targets), "--seed", str(args.seed)]
        subprocess.run(cmd, check=True)
        records = args.targets * sum(n for n, _ in SIZES.values())
        print(f"{records} synthetic records written in {time.perf_counter() - t0:.1f} s (not timed below)")
        run = Path(tmp) / "speed"
        t0 = time.perf_counter()
        report = write_report(run)
        elapsed = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # Targets are summarised in worker processes: the largest of them (the generator above
        # included, so this is an upper bound), and at most one per core alive at once.
        worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        compared = sum(1 for r in report["rows"] if r.get("comparison"))
        print(
            f"write_report: {elapsed:.2f} s, peak RSS {rss_mb:.0f} MB, largest child {worker_mb:.0f} MB "
            f"({len(report['rows'])} rows, {compared} "
            f"compared, report.html {(run / 'report.html').stat().st_size / 1e3:.0f} kB)"
        )


if __name__ == "__main__":
    main()
