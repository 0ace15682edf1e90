"""What concurrency buys on each llama.cpp server: the embedded default's bench (manifests/local.yaml:
its tasks, prompts and max_tokens) on one GGUF, at concurrency 1, 4 and 16, against llama.cpp's
own llama-server and llama-cpp-python's server, both started by the orchestrator as the
embedded default starts them. Prints requests/s and TTFT p50 (from each run's report.json) and
who set the pace.

The GGUF is a random one of Qwen2-0.5B's shape (benchmarks/llama_build_speed.py builds it: F16,
Q8_0, Q4_K_M); without the Hub the real Qwen2-0.5B-Instruct GGUF cannot be had here. Its replies
are noise, so every request runs to max_tokens: a harder load than the real model's short answers.

    python benchmarks/llama_servers.py [--quant q4_k_m] [--limit 16] [--levels 1,4,16]
        [--variant "llama-server --cache-ram 8192=--cache-ram,8192"]

A variant is ``label=ARG,ARG``: llama-server with extra arguments (e.g. its default 8 GiB prompt
cache, against the launcher's --cache-ram 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.llama_build_speed import build_models  # noqa: E402


def bench(
    model: Path, tokenizer: Path, data_dir: Path, server: str, extra: list[str], concurrency: int, limit: int, out: Path
) -> dict[str, Any]:
    """One `orchestrate bench` of the embedded default's tasks on one server at one concurrency."""
    local = yaml.safe_load((REPO / "manifests" / "local.yaml").read_text())
    target = {"name": "t", "model": "qwen2-0.5b-shape", "quantization": "Q", "backend": "llamacpp",
              "tokenizer": str(tokenizer),
              "launch": {"model_path": str(model), "n_ctx": 8192, "server": server, "extra_args": extra}}  # fmt: skip
    manifest = {**local, "run": {**local["run"], "output_dir": str(out), "data_dir": str(data_dir)},
                "client": {**local["client"], "concurrency": concurrency}, "targets": [target]}  # fmt: skip
    path = out / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cmd = [sys.executable, "-m", "orchestrator.cli", "bench", str(path), "--limit", str(limit),
           "--run-id", "r", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    row = json.loads((out / "r" / "report.json").read_text())["rows"][0]
    return {"speed": row["speed"], "saturation": row["saturation"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=str(Path.home() / ".cache" / "orchestrator" / "bench-qwen2-0.5b-shape"))
    p.add_argument("--data-dir", default=os.environ.get("ORCHESTRATOR_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--quant", default="q4_k_m", choices=["f16", "q8_0", "q4_k_m"])
    p.add_argument("--limit", type=int, default=16, help="samples per task (local.yaml's limits are 57/52/9)")
    p.add_argument("--levels", default="1,4,16")
    p.add_argument("--variant", action="append", default=[], help="label=ARG,ARG: llama-server with extra args")
    args = p.parse_args()
    models = build_models(Path(args.models), Path(args.data_dir))
    tokenizer = Path(args.models)  # build_models writes the tokenizer files beside the GGUFs
    configs = [("llama-server", "llama-server", []), ("llama-cpp-python", "llama-cpp-python", [])]
    for v in args.variant:
        label, _, extra = v.partition("=")
        configs.append((label, "llama-server", extra.split(",") if extra else []))
    levels = [int(x) for x in args.levels.split(",")]
    print(f"{args.quant} GGUF of Qwen2-0.5B's shape; local.yaml's tasks, --limit {args.limit} each")
    print("(the servers take turns within each level, so that the machine's drift hits them alike)")
    print(f"{'server':<28} {'c':>3} {'req/s':>7} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12}  limit")
    for c in levels:
        for label, server, extra in configs:
            with tempfile.TemporaryDirectory() as tmp:
                got = bench(models[args.quant], tokenizer, Path(args.data_dir), server, extra, c, args.limit, Path(tmp))
            if "error" in got:
                print(f"{label:<28} {c:>3} failed: {got['error']}")
                continue
            s = got["speed"]
            print(
                f"{label:<28} {c:>3} {s['requests_per_s']:>7.2f} {s['ttft_p50_ms']:>12.0f} "
                f"{s['tpot_p50_ms'] or 0:>12.1f}  {got['saturation']['limit']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
