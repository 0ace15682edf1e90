"""What quantization buys, on a GPU: one `orchestrate bench` of managed llama-server targets (CUDA,
every layer offloaded), with `nvidia-smi` polled beside it as an independent witness. Per row: the
weights (GB, bits per weight), the GPU memory the orchestrator read through NVML by process id
against what nvidia-smi said of the same process, and the energy the speed phase took per output
token at the run's concurrency and at batch 1, and per correct answer in the accuracy pass.

    python benchmarks/footprint_gpu.py --gguf F16=m/f16.gguf --gguf Q4_K_M=m/q4.gguf \\
        --binary PATH/llama-server [--extra-arg=-ngl --extra-arg=99] [--concurrency 64] [--data-dir DIR]

Prints one table; the run and nvidia-smi's log stay under --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def manifest(args: argparse.Namespace, out: Path) -> Path:
    targets = []
    for spec in args.gguf:
        quant, path = spec.split("=", 1)
        launch: dict[str, Any] = {
            "model_path": str(Path(path).resolve()),
            "n_ctx": args.n_ctx,
            "server": "llama-server",
        }
        if args.binary:
            launch["binary"] = args.binary
        if args.extra_arg:
            launch["extra_args"] = list(args.extra_arg)  # a list of its own: safe_dump would alias a shared one
        targets.append({"name": quant.lower(), "model": "m", "quantization": quant, "backend": "llamacpp",
                        "tokenizer": str(Path(args.tokenizer).resolve()), "launch": launch})  # fmt: skip
    data = {
        "run": {"name": "fp", "output_dir": str(out), "data_dir": str(Path(args.data_dir).resolve())},
        "tasks": {"mmlu": {"limit": args.mmlu, "max_tokens": 16, "shots": 0}},
        "client": {"concurrency": args.concurrency, "request_timeout": 600},
        "speed_phase": {"requests": args.requests, "batch1_requests": 8, "duration": 60},
        "targets": targets,
    }
    path = out / "fp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def poll_smi(log: Path, stop: threading.Event) -> None:
    """nvidia-smi's per-process GPU memory, once a second: (time, pid, MiB) lines."""
    with log.open("w") as f:
        while not stop.wait(1.0):
            done = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            for line in done.stdout.splitlines():
                pid, mib = (x.strip() for x in line.split(","))
                f.write(f"{time.time():.3f} {pid} {mib}\n")
            f.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", action="append", required=True, help="QUANT=PATH (the first is the reference)")
    p.add_argument("--binary")
    p.add_argument("--extra-arg", action="append", default=[])
    p.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "data" / "qwen2-tokenizer"))
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=32768)
    p.add_argument("--mmlu", type=int, default=128)
    p.add_argument("--out")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    smi = out / "nvidia-smi.log"
    poller = threading.Thread(target=poll_smi, args=(smi, stop), daemon=True)
    poller.start()
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "bench",
        str(manifest(args, out)),
        "--run-id",
        "fp",
        "--no-progress",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    stop.set()
    poller.join()
    (out / "bench.stdout").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"bench failed: {done.stderr[-2000:]}")
    report = json.loads((out / "fp" / "report.json").read_text())
    # nvidia-smi's processes in order of appearance: the targets ran one after the other.
    seen: dict[str, list[int]] = {}
    for line in smi.read_text().splitlines():
        _, pid, mib = line.split()
        seen.setdefault(pid, []).append(int(mib) * 1024 * 1024)
    smi_peaks = [max(v) for v in seen.values()]
    print(f"concurrency {args.concurrency}; run in {out}")
    print(f"{'row':<8} {'weights GB':>10} {'bpw':>5} | {'NVML peak GB':>12} {'steady':>7} {'smi peak GB':>11} | "
          f"{'J/tok c=N':>9} {'J/tok c=1':>9} {'W c=N':>6} {'W c=1':>6} {'J/correct':>9} {'valid':>5}")  # fmt: skip
    for i, row in enumerate(report["rows"]):
        fp = row["footprint"] or {}
        w, gpu = fp.get("weights") or {}, (fp.get("memory") or {}).get("gpu") or {}
        levels = fp.get("speed_energy") or [{}, {}]
        acc = fp.get("accuracy_energy") or {}
        smi_peak = smi_peaks[i] / 1e9 if i < len(smi_peaks) else float("nan")
        valid = all(e and e.get("valid") for e in [*levels, acc])
        main, b1 = levels[0] or {}, levels[-1] or {}
        print(f"{row['quantization']:<8} {(w.get('bytes') or 0) / 1e9:>10.2f} {w.get('bits_per_weight') or 0:>5.2f} | "
              f"{(gpu.get('peak_bytes') or 0) / 1e9:>12.2f} {(gpu.get('steady_bytes') or 0) / 1e9:>7.2f} "
              f"{smi_peak:>11.2f} | {main.get('j_per_token') or 0:>9.4f} {b1.get('j_per_token') or 0:>9.4f} "
              f"{main.get('mean_watts') or 0:>6.0f} {b1.get('mean_watts') or 0:>6.0f} "
              f"{acc.get('j_per_correct') or 0:>9.2f} {valid!s:>5}")  # fmt: skip
        for e in [*levels, acc]:
            if e and not e.get("valid"):
                print(f"  flagged {e.get('phase')}: {e.get('why')}")
        for e in levels:
            keys = ("coverage", "max_gap_s", "joules", "seconds", "output_tokens", "source")
            print(f"  speed c={(e or {}).get('concurrency')}: {json.dumps({k: (e or {}).get(k) for k in keys})}")


if __name__ == "__main__":
    main()
