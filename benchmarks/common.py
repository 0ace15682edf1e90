"""Shared by the client benchmarks: a synthetic task, a server subprocess, and a runner call."""

from __future__ import annotations

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
from orchestrator.records import SampleRecord
from orchestrator.runner import Runner
from orchestrator.runtime import run_async
from orchestrator.store import RunStore, read_records
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
        return [Sample(f"s/{i}", "s", (("user", f"Say something #{i}"),), gold="A") for i in range(self.n)]

    def score(self, sample: Sample, reply: str) -> Score:
        return Score(None, "unparsed", False)

    def score_job(self, sample: Sample, reply: str) -> None:
        return None  # scored in the loop's process

    def aggregate(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        return {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """benchmarks/sse_server.py in its own process."""

    def __init__(self, tokens: int, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(HERE / "sse_server.py"), str(self.port), str(tokens), *extra]
        self.proc = subprocess.Popen(cmd)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/v1/models", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("benchmark server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run_client(
    url: str, concurrency: int, requests: int, tokens: int, logprobs: int = 0
) -> tuple[float, float, list[dict[str, Any]]]:
    """(wall seconds, client CPU seconds, records) of the orchestrator's runner on the synthetic
    task (``logprobs``: the top-k asked for)."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = parse_manifest(
            {
                "run": {"name": "bench", "output_dir": tmp},
                "tasks": {"mmlu": {}},  # replaced by the synthetic task
                "client": {"concurrency": concurrency, "retries": 0, "request_timeout": 120},
                "generation": {"logprobs": logprobs},
                "targets": [{"name": "b", "model": "b", "quantization": "-", "backend": "openai", "url": url}],
            }
        )
        store = RunStore(Path(tmp) / "run")
        runner = Runner(manifest, [SyntheticTask(requests, tokens)], store)
        cpu0, t0 = time.process_time(), time.perf_counter()
        outcomes = run_async(runner.run())  # the CLI's loop (uvloop when installed)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        store.close()
        records = list(read_records(store.samples_path("b", "synthetic", runner.store_key)))
    if len(records) != requests:  # a benchmark that measured nothing must not print figures
        raise SystemExit(f"benchmark run wrote {len(records)} records, not {requests}")
    if outcomes[0].failure or outcomes[0].errors:
        raise SystemExit(f"benchmark run failed: {outcomes[0].failure or outcomes[0].errors} errors")
    return wall, cpu, records
