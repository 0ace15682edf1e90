"""Timing accuracy: what the client measures vs what the server did, under load.

A local server (its own process, benchmarks/sse_server.py) waits 100 ms, then streams 128 tokens
5 ms apart, and keeps its own perf_counter stamps of every reply. For every request the
orchestrator's measured TTFT, each inter-token gap and E2E are compared with the server's
(request reached the server's socket, by the kernel's receive timestamp -> first chunk written;
chunk to chunk; received -> end of reply written): the difference is the error the client adds
(loopback transfer, event-loop scheduling, parsing). Also printed: measured minus injected (adds
the server's own timer overshoot). Targets at c=64: median error <= 1 ms, p99 <= 5 ms.

Usage: python benchmarks/timing_accuracy.py [--requests 512] [--concurrency 64 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import urllib.request

from common import Server, run_client

from orchestrator import timing

TTFT_MS, ITL_MS, TOKENS = 100.0, 5.0, 128


def errors(records: list[dict], stamps: dict[str, dict]) -> dict[str, list[float]]:  # type: ignore[type-arg]
    out: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": [], "ttft_vs_injected": []}
    for r in records:
        server = stamps[r["raw"]["final_chunk"]["id"]]
        t = r["timing"]
        chunks = t["chunks"]
        s_ttft = server["chunks"][0] - server["recv"]
        s_e2e = server["end"] - server["recv"]
        out["ttft"].append((t["ttft"] - s_ttft) * 1000)
        out["e2e"].append((t["e2e"] - s_e2e) * 1000)
        out["ttft_vs_injected"].append(t["ttft"] * 1000 - TTFT_MS)
        client_gaps = [b - a for a, b in itertools.pairwise(chunks)]
        server_gaps = [b - a for a, b in itertools.pairwise(server["chunks"])]
        out["itl"] += [(c - s) * 1000 for c, s in zip(client_gaps, server_gaps, strict=False)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeat", type=int, default=3, help="runs per level; figures are the median over runs")
    args = ap.parse_args()
    server = Server(TOKENS, "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS))
    try:
        print(
            f"server: TTFT {TTFT_MS:.0f} ms, ITL {ITL_MS:.0f} ms, {TOKENS} tokens; {args.requests} requests per "
            f"level; median of {args.repeat} runs (range in brackets)"
        )
        print(f"{'c':>5} {'metric':<18} {'median ms':>24} {'p99 |error| ms':>24}   (client minus server)")
        for c in args.concurrency:
            runs: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.repeat):
                _, _, records = run_client(server.url, c, args.requests, TOKENS)
                with urllib.request.urlopen(f"{server.url}/stamps") as resp:
                    stamps = json.load(resp)
                for name, values in errors(records, stamps).items():
                    med = timing.percentile(values, 50) or 0.0
                    p99 = timing.percentile([abs(v) for v in values], 99) or 0.0
                    runs.setdefault(name, []).append((med, p99))
            for name, figures in runs.items():
                cells = []
                for col in (0, 1):
                    values = [f[col] for f in figures]
                    cells.append(f"{statistics.median(values):.3f} [{min(values):.2f}, {max(values):.2f}]")
                print(f"{c:>5} {name:<18} {cells[0]:>24} {cells[1]:>24}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
