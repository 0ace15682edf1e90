"""Does the table's speed still move with what the accuracy pass asks? Two `orchestrate bench` runs
of the same managed llama-server targets, one with `generation.logprobs: 5` and one without; per
row, TPOT p50 and output tokens/s under the evaluation workload (the accuracy pass) and from the
controlled speed phase (the table's), and each quantization's out tok/s ratio against F16.

    python benchmarks/speed_phase_logprobs.py --gguf F16=m/f16.gguf --gguf Q4_K_M=m/q4.gguf \\
        [--binary PATH/llama-server] [--extra-arg=-ngl --extra-arg=99] [--concurrency 64] [--data-dir DIR]

Prints one table; both runs stay under --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def manifest(args: argparse.Namespace, out: Path, logprobs: int) -> Path:
    targets = []
    for spec in args.gguf:
        quant, path = spec.split("=", 1)
        launch: dict[str, Any] = {"model_path": str(Path(path).resolve()), "n_ctx": 4096, "server": "llama-server"}
        if args.binary:
            launch["binary"] = args.binary
        if args.extra_arg:
            launch["extra_args"] = list(args.extra_arg)  # a list of its own: safe_dump would alias a shared one
        targets.append({"name": quant.lower(), "model": "m", "quantization": quant, "backend": "llamacpp",
                        "tokenizer": str(Path(args.tokenizer).resolve()), "launch": launch})  # fmt: skip
    data = {
        "run": {"name": f"lp{logprobs}", "output_dir": str(out), "data_dir": str(Path(args.data_dir).resolve())},
        "tasks": {"mmlu": {"limit": args.mmlu, "max_tokens": 32}, "ifeval": {"limit": args.ifeval, "max_tokens": 256}},
        "generation": {"logprobs": logprobs},
        "client": {"concurrency": args.concurrency, "request_timeout": 600},
        "targets": targets,
    }
    path = out / f"lp{logprobs}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", action="append", required=True, help="QUANT=PATH (the first is the reference)")
    p.add_argument("--binary")
    p.add_argument("--extra-arg", action="append", default=[])
    p.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "data" / "qwen2-tokenizer"))
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--mmlu", type=int, default=128)
    p.add_argument("--ifeval", type=int, default=16)
    p.add_argument("--out")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for k in (0, 5):
        cmd = [sys.executable, "-m", "orchestrator.cli", "bench", str(manifest(args, out, k)), "--run-id", f"lp{k}",
               "--no-progress"]  # fmt: skip
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"bench with logprobs {k} failed: {done.stderr[-2000:]}")
        reports[k] = json.loads((out / f"lp{k}" / "report.json").read_text())
    print(f"concurrency {args.concurrency}; runs in {out}")
    print(f"{'row':<10} {'logprobs':>8} | {'eval TPOT':>10} {'eval tok/s':>10} {'eval ×ref':>9} | "
          f"{'phase TPOT':>10} {'phase tok/s':>11} {'phase ×ref':>10} {'batch-1 tok/s':>13}")  # fmt: skip
    for k, report in reports.items():
        rows = report["rows"]
        ref_eval = rows[0]["speed"]["output_tokens_per_s"]
        ref_phase = rows[0]["speed_phase"]["levels"][0]["output_tokens_per_s"]
        for row in rows:
            ev, main = row["speed"], row["speed_phase"]["levels"][0]
            b1 = row["speed_phase"]["levels"][-1]
            print(f"{row['quantization']:<10} {k:>8} | {ev['tpot_p50_ms']:>10.1f} {ev['output_tokens_per_s']:>10.1f} "
                  f"{ev['output_tokens_per_s'] / ref_eval:>9.2f} | {main['tpot_p50_ms']:>10.1f} "
                  f"{main['output_tokens_per_s']:>11.1f} {main['output_tokens_per_s'] / ref_phase:>10.2f} "
                  f"{b1['decode_tokens_per_s'] or 0:>13.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
