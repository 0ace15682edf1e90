"""Client overhead: sustained requests/s and client CPU per request against a zero-latency server.

The full client path is measured (runner, adapter, SSE parsing, timing, records written to the
store), against a local server in its own process that streams N tokens per request instantly.
A first baseline; the target against vLLM's own client comes with the load-testing work.

Usage: python benchmarks/client_overhead.py [--requests 4000] [--tokens 16] [--concurrency 64 256]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.manifest import parse_manifest
from orchestrator.runner import Runner
from orchestrator.store import RunStore
from orchestrator.tasks import Sample, Score

HERE = Path(__file__).resolve().parent


class SyntheticTask:
    """N short chat samples; scoring is trivial so the figure is the client's transport cost."""

    name = "synthetic"
    setup = "qwen"

    def __init__(self, n: int, max_tokens: int) -> None:
        self.n = n
        self.max_tokens = max_tokens

    def samples(self) -> list[Sample]:
        return [Sample(f"s/{i}", "s", (("user", f"Say something #{i}"),), "A") for i in range(self.n)]

    def score(self, sample: Sample, reply: str) -> Score:
        return Score(None, "unparsed", False)

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = parse_manifest(
            {
                "run": {"name": "overhead", "output_dir": tmp},
                "tasks": {"mmlu": {}},  # replaced below by the synthetic task
                "load": {"concurrency": concurrency, "retries": 0, "request_timeout": 60},
                "targets": [{"name": "zero", "model": "zero", "quantization": "-", "backend": "openai", "url": url}],
            }
        )
        store = RunStore(Path(tmp) / "run")
        runner = Runner(manifest, [SyntheticTask(requests, tokens)], store)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        outcomes = asyncio.run(runner.run())
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        store.close()
    if outcomes[0].failure or outcomes[0].errors:
        raise SystemExit(f"benchmark run failed: {outcomes[0].failure or outcomes[0].errors}")
    return {
        "requests_per_s": requests / wall,
        "tokens_per_s": requests * tokens / wall,
        "cpu_us_per_request": cpu / requests * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "zero_latency_server.py"), str(port), str(args.tokens)])
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"zero-latency SSE server, {args.tokens} tokens/request, {args.requests} requests per level")
        print(f"{'concurrency':>11} {'requests/s':>11} {'tokens/s':>10} {'client CPU µs/req':>18}")
        for c in args.concurrency:
            r = measure(url, c, args.requests, args.tokens)
            print(f"{c:>11} {r['requests_per_s']:>11.0f} {r['tokens_per_s']:>10.0f} {r['cpu_us_per_request']:>18.0f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
