"""Logprobs cost: client CPU per request and store bytes per sample, asking for top-k logprobs
(k = 0, 5, 20) from a zero-latency SSE server that sends them as vLLM does (each chunk its token's
logprob and k alternatives). Runs are interleaved (0, 5, 20, 0, 5, 20, ...) so that the machine's
drift weighs on every k alike; each figure is the median of --repeat runs.

Usage: python benchmarks/logprobs_cost.py [--requests 4000] [--tokens 16] [--concurrency 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics

import orjson
from common import Server, run_client

KS = (0, 5, 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    servers = {k: Server(args.tokens, "--logprobs", str(k)) for k in KS}
    figures: dict[int, list[tuple[float, float, float]]] = {k: [] for k in KS}
    try:
        for _ in range(args.repeat):
            for k in KS:
                wall, cpu, records = run_client(servers[k].url, args.concurrency, args.requests, args.tokens, k)
                if k and not all(r.get("logprobs") and len(r["logprobs"]) == args.tokens for r in records):
                    raise SystemExit(f"k={k}: records without their logprobs")
                size = sum(len(orjson.dumps(r)) + 1 for r in records) / len(records)  # one JSONL line each
                figures[k].append((args.requests / wall, cpu / args.requests * 1e6, size))
    finally:
        for server in servers.values():
            server.stop()
    print(f"{args.requests} requests x {args.tokens} tokens at concurrency {args.concurrency}, median of {args.repeat}")
    print(f"{'k':>3} {'req/s':>8} {'CPU us/req':>11} {'extra CPU':>10} {'bytes/sample':>13} {'extra bytes':>12}")
    base_cpu = statistics.median(f[1] for f in figures[0])
    base_size = statistics.median(f[2] for f in figures[0])
    for k in KS:
        rps = statistics.median(f[0] for f in figures[k])
        cpu = statistics.median(f[1] for f in figures[k])
        size = statistics.median(f[2] for f in figures[k])
        print(f"{k:>3} {rps:>8.0f} {cpu:>11.0f} {cpu - base_cpu:>+10.0f} {size:>13.0f} {size - base_size:>+12.0f}")


if __name__ == "__main__":
    main()
