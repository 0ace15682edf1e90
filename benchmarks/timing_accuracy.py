"""Timing accuracy: what the client measures vs what the server did, under load.

A local server (its own process) waits 100 ms, then streams 128 tokens 5 ms apart, and reports its
own perf_counter stamps. For every request the orchestrator's measured TTFT, each inter-token gap
and E2E are compared with the server's (request received -> first chunk written, chunk to chunk,
received -> last chunk written): the difference is the error the client adds (loopback transfer,
event-loop scheduling, parsing). Also printed: measured minus injected (includes the server's own
sleep overshoot). Targets at c=64: median error <= 1 ms, p99 <= 5 ms.

Usage: python benchmarks/timing_accuracy.py [--requests 512] [--concurrency 64 256]
"""

from __future__ import annotations

import argparse
import itertools

from common import Server, run_client

from orchestrator import timing

TTFT_MS, ITL_MS, TOKENS = 100.0, 5.0, 128


def errors(records: list[dict]) -> dict[str, list[float]]:  # type: ignore[type-arg]
    out: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": [], "ttft_vs_injected": []}
    for r in records:
        server = r["raw"]["usage_chunk"]["server_stamps"]
        t = r["timing"]
        s_ttft = server["chunks"][0] - server["recv"]
        s_e2e = server["chunks"][-1] - server["recv"]
        out["ttft"].append((t["ttft"] - s_ttft) * 1000)
        out["e2e"].append((t["e2e"] - s_e2e) * 1000)
        out["ttft_vs_injected"].append(t["ttft"] * 1000 - TTFT_MS)
        client_gaps = timing.itl(t)
        server_gaps = [b - a for a, b in itertools.pairwise(server["chunks"])]
        out["itl"] += [(c - s) * 1000 for c, s in zip(client_gaps, server_gaps, strict=False)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    args = ap.parse_args()
    server = Server(TOKENS, "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS))
    try:
        print(
            f"server: TTFT {TTFT_MS:.0f} ms, ITL {ITL_MS:.0f} ms, {TOKENS} tokens; {args.requests} requests per level"
        )
        print(f"{'c':>5} {'metric':<18} {'median ms':>10} {'p99 ms':>9}   (client-measured minus server-recorded)")
        for c in args.concurrency:
            _, _, records = run_client(server.url, c, args.requests, TOKENS)
            for name, values in errors(records).items():
                med = timing.percentile(values, 50) or 0.0
                p99 = timing.percentile([abs(v) for v in values], 99) or 0.0
                print(f"{c:>5} {name:<18} {med:>10.3f} {p99:>9.3f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
