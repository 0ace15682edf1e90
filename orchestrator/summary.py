"""One target's records reduced to what a report needs: read, summarised and dropped, on every core.

A report of 16 targets x (MMLU + C-Eval + IFEval) reads 254,864 records; holding them all cost most
of its memory and reading them most of its time. So each target's records are read, reduced to a
``TargetSummary`` (its task aggregates with their intervals and completeness, the Average, speed
figures, replica counts, and per task the outcomes, answers and verdicts that comparisons with
other targets need) and dropped. With several cores the targets are summarised in worker
processes; when no worker can be started (a sandbox without semaphores, one core) it is done
here, target by target, with the same result.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator import metrics, timing
from orchestrator.loadtest import timing_of, token_agreement
from orchestrator.records import SampleRecord
from orchestrator.stats import Outcomes
from orchestrator.store import RunStore
from orchestrator.tasks import Task, build_task
from orchestrator.verdicts import answers_of, target_statistics, verdicts_of


@dataclass(frozen=True)
class TaskSide:
    """One target's side of a task's comparisons: the headline outcomes, answers and verdicts."""

    outcomes: Outcomes
    answers: dict[str, Any]  # sample id -> extracted answer (the reply when nothing is extracted)
    verdicts: dict[str, bool]  # sample id -> right
    logprobs: dict[str, list[Any]]  # sample id -> its stored logprobs (runs that asked for them)


@dataclass(frozen=True)
class TargetSummary:
    """Everything a report row holds of one target, computed from its records."""

    target: str
    tasks: dict[str, dict[str, Any]]  # task -> aggregate, with its intervals and completeness
    average: dict[str, Any]  # average, average_interval, average_missing, average_tasks
    sides: dict[str, TaskSide]
    speed: dict[str, Any]
    replicas: dict[str, int]
    costs: dict[str, dict[str, Any]]  # task -> what an answer costs (answer_costs)


# Below this much of records (~15,000) starting workers costs more than it saves.
PARALLEL_BYTES = 8 << 20


@dataclass(frozen=True)
class _Job:
    run_dir: Path
    target: str
    tasks: tuple[str, ...]
    setup: str
    key: str
    expected: tuple[tuple[str, int], ...]


# A bench row's speed figures: (latency, its key in report.json), each at its median.
SPEED_LATENCIES = {
    "ttft_ms": "ttft_p50_ms",
    "tpot_ms": "tpot_p50_ms",
    "e2el_ms": "e2e_p50_ms",
    "send_delay_ms": "send_delay_p50_ms",
    "server_tpot_ms": "server_tpot_p50_ms",
    "server_wait_ms": "server_wait_p50_ms",
}


def speed_figures(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """Throughput and latency of a target's answered requests (all its tasks), through the one
    metric pipeline (metrics.py) a load test's levels use too."""
    ok = [r for r in records if r.timed]
    busy = timing.busy_seconds((t.wall_send, t.wall_send + t.e2e) for t in (timing_of(r) for r in ok))
    out_tokens = sum(n for r in ok if (n := r.completion_tokens) is not None)
    found = metrics.latencies(ok, ok, SPEED_LATENCIES, (50,))
    sources = sorted({r.token_source or "none" for r in ok})
    return {
        "requests": len(ok),
        "busy_seconds": busy,
        "requests_per_s": len(ok) / busy if busy > 0 else None,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / busy if busy > 0 else None,
        **{key: found[name].p(50) for name, key in SPEED_LATENCIES.items()},
        # Requests sent again at once on a keep-alive connection the server had closed: not a
        # retry after an error, but a second send all the same.
        "resent": sum(1 for r in records if r.resends),
        "token_sources": sources,
        "token_count_agreement": token_agreement((r.token_counts, r.token_source) for r in ok),
    }


def answer_costs(records: Sequence[SampleRecord]) -> dict[str, Any] | None:
    """What an answer of one task costs, from the accuracy pass: output tokens per answer (mean,
    p90), the share cut at max_tokens, and output tokens and server seconds per *correct* answer
    (a quantization that rambles pays for it here). Server seconds: the server's own account of
    each request where it gives one (llama-server's prompt + generation time), else the client's
    send-to-last-byte; both count a request's whole time, batched with others or not."""
    answered = [r for r in records if r.answered]
    if not answered:
        return None
    tokens = sorted(n for r in answered if (n := r.completion_tokens) is not None)
    correct = sum(1 for r in answered if r.correct)
    seconds, sources = 0.0, set()
    for r in answered:
        st = r.server_timing
        if st is not None and st.prompt_ms is not None and st.predicted_ms is not None:
            seconds += (st.prompt_ms + st.predicted_ms) / 1000.0
            sources.add("server")
        elif r.timing is not None:
            seconds += r.timing.e2e
            sources.add("client")
    return {
        "answers": len(answered),
        "correct": correct,
        "mean_output_tokens": sum(tokens) / len(tokens) if tokens else None,
        "p90_output_tokens": timing.percentile_of_sorted(tokens, 90) if tokens else None,
        "cut_at_max_tokens": sum(1 for r in answered if r.finish_reason == "length") / len(answered),
        "output_tokens_per_correct": sum(tokens) / correct if correct and tokens else None,
        "server_seconds_per_correct": seconds / correct if correct and sources else None,
        "seconds_from": "/".join(sorted(sources)) or None,
    }


def replica_counts(records: Sequence[SampleRecord]) -> dict[str, int]:
    """Answered requests per replica URL (targets with several URLs)."""
    counts: dict[str, int] = {}
    for r in records:
        if r.replica and r.answered:
            counts[r.replica] = counts.get(r.replica, 0) + 1
    return counts


@cache
def _task(name: str, setup: str) -> Task:
    return build_task(name, None, setup=setup)


def summarize(
    store: RunStore, target: str, tasks: Mapping[str, Task], key: str, expected: Mapping[str, int]
) -> TargetSummary:
    """One target's summary, from its records in ``store`` under the setup ``key``."""
    records = {name: store.records(target, name, key) for name in tasks}
    aggregates = {name: task.aggregate(records[name]) for name, task in tasks.items()}
    outcomes, average = target_statistics(target, aggregates, records, tasks, expected)
    everything = [r for recs in records.values() for r in recs]
    return TargetSummary(
        target=target,
        tasks=aggregates,
        average=average,
        sides={
            name: TaskSide(
                outcomes[name],
                answers_of(records[name]),
                verdicts_of(records[name]),
                {r.id: r.logprobs for r in records[name] if r.answered and r.logprobs},
            )
            for name in tasks
        },
        speed=speed_figures(everything),
        replicas=replica_counts(everything),
        costs={name: cost for name in tasks if (cost := answer_costs(records[name])) is not None},
    )


def _run_job(job: _Job) -> TargetSummary:
    # Records hold no reference cycles: a collection while a target's tens of thousands of them
    # are built only walks them again.
    paused = gc.isenabled()
    gc.disable()
    try:
        tasks = {name: _task(name, job.setup) for name in job.tasks}
        return summarize(RunStore(job.run_dir), job.target, tasks, job.key, dict(job.expected))
    finally:
        if paused:
            gc.enable()


def _bytes(store: RunStore, targets: Sequence[str], tasks: Sequence[str], key: str) -> int:
    paths = (store.samples_path(t, name, key) for t in targets for name in tasks)
    return sum(p.stat().st_size for p in paths if p.exists())


def _worker_signals() -> None:
    # Ctrl-C reaches the whole process group: the report's own process handles it (one line, and
    # the pool is shut down); a worker waiting for work would print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def summarize_run(
    run_dir: Path, targets: Sequence[str], tasks: Sequence[str], setup: str, key: str, expected: Mapping[str, int]
) -> list[TargetSummary]:
    """Every target's summary, in ``targets`` order: in worker processes when there are several
    targets and cores, else here."""
    jobs = [_Job(run_dir, t, tuple(tasks), setup, key, tuple(expected.items())) for t in targets]
    workers = min(_cores(), len(jobs))
    if workers > 1 and _bytes(RunStore(run_dir), targets, tasks, key) >= PARALLEL_BYTES:
        # fork is cheap but only safe while this process runs one thread; else a fresh interpreter.
        method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
        try:
            context = multiprocessing.get_context(method)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_signals) as pool:
                return list(pool.map(_run_job, jobs))
        except (OSError, BrokenProcessPool, NotImplementedError):
            pass  # no worker could run here: the same work, in this process
    return [_run_job(job) for job in jobs]


__all__ = ["TargetSummary", "TaskSide", "answer_costs", "replica_counts", "speed_figures", "summarize", "summarize_run"]
