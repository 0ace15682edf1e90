"""The bench's controlled speed phase: what the main table's speed columns measure.

The accuracy pass's timings say what the evaluation asked of a server (top-k logprobs, which
halve llama-server's throughput; 5-shot prompts beside 1,280-token answers; each quantization's
own answer lengths), not how fast it serves. So after a target's accuracy pass, with its server
still up and nothing else sent to any server, the bench sends every target of the run the same
workload: synthetic prompts of ``input_tokens`` tokens of the model's tokenizer (the same seed,
so the same prompts on every row of a model; the run's own prompts where no tokenizer can be
had), ``output_tokens``-token replies with end-of-sequence ignored where the backend honours it
(else the real lengths are reported), greedy, no logprobs, at the run's concurrency and at batch
1. Each level is one of ``orchestrate load``'s closed-loop levels (``loadrun.run_level``), its
records kept under ``samples/<target>/speed-c<N>.speed.jsonl`` and reduced by the load test's
metric pipeline (``loadtest.level_metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import math
import random
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.backends import Backend
from orchestrator.errors import UserError
from orchestrator.manifest import GenerationConfig, LoadProfile, Manifest, SpeedPhaseConfig, TargetConfig
from orchestrator.meter import Meter
from orchestrator.records import LoadRecord
from orchestrator.serving import Progress
from orchestrator.store import RunStore
from orchestrator.tasks import Sample

SETUP = "speed"  # the records files' setup part: speed-c64.speed.jsonl
Prompts = list[tuple[tuple[str, str], ...]]


def level_file(concurrency: int) -> str:
    """The records file (task part) of the level at ``concurrency``."""
    return f"speed-c{concurrency}"


def level_profiles(config: SpeedPhaseConfig, concurrency: int) -> list[tuple[int, LoadProfile]]:
    """The phase's levels, the run's concurrency first, then batch 1, each as a load profile."""
    base = LoadProfile(
        mode="concurrency",
        levels=(concurrency,),
        requests=config.requests,
        duration=config.duration,
        warmup=config.warmup,
        input_tokens=config.input_tokens,
        output_tokens=config.output_tokens,
        ignore_eos=True,
        seed=config.seed,
    )
    levels = [(concurrency, base)]
    if concurrency != 1:
        levels.append((1, dataclasses.replace(base, levels=(1,), requests=config.batch1_requests)))
    return levels


async def run_phase(
    target: TargetConfig,
    backends: Sequence[Backend],
    concurrency: int,
    config: SpeedPhaseConfig,
    gen: GenerationConfig,
    store: RunStore,
    progress: Progress,
    tokenizer_path: Callable[[TargetConfig], Path | None],
    fallback: Callable[[int, int], Prompts],
    tokenizer_of: TargetConfig | None = None,
    meter: Meter | None = None,
) -> dict[str, Any]:
    """One target's speed phase on its first server; run.json's account of it (the levels, their
    profiles and files, the workload, and what it had to adapt to).

    ``tokenizer_of``: the target whose tokenizer makes the prompts (one per model, so that every
    row of a model gets the same ones; default ``target``); ``fallback(n, seed)``: n of the run's
    own prompts, when no tokenizer can be had.
    """
    donor = tokenizer_of or target
    from orchestrator.loadrun import LevelPlan, chat_template, prompt_counts, run_level, target_tokenizer
    from orchestrator.loadtest import synthetic_prompts

    notes: list[str] = []
    backend = backends[0]
    if len(backends) > 1:
        # One server measured, at its share of the run's requests in flight.
        concurrency = math.ceil(concurrency / len(backends))
        notes.append(f"{len(backends)} replicas: the first measured, at {concurrency} requests in flight")
    try:
        tokenizer = await asyncio.to_thread(target_tokenizer, donor, tokenizer_path)
    except (UserError, OSError, ValueError, RuntimeError) as exc:
        tokenizer = None
        notes.append(f"no tokenizer for synthetic prompts ({exc}): the run's own prompts were sent")
    template = None if tokenizer is None else await asyncio.to_thread(chat_template, donor, tokenizer_path)
    if not backend.supports_ignore_eos:
        notes.append(
            f"backend {target.backend} cannot ignore end-of-sequence: replies may be shorter than "
            f"{config.output_tokens} tokens (the measured lengths are reported)"
        )
    levels = []
    for i, (level, profile) in enumerate(level_profiles(config, concurrency)):
        # As many cool-down requests as slots keep every slot busy until the last measured one ends.
        n = profile.warmup + profile.requests + level
        seed = config.seed + i
        if tokenizer is not None:
            prompts: Prompts = [(("user", p),) for p in synthetic_prompts(tokenizer, n, config.input_tokens, seed)]
        else:
            prompts = fallback(n, seed)
        counts = prompt_counts(tokenizer, template, prompts)
        plan = LevelPlan(target.name, "concurrency", level, prompts, [], counts, profile, level_file(level), SETUP)
        store.discard(target.name, plan.file, SETUP)  # an interrupted phase's records: measured again
        result = await run_level(plan, backend, store, progress, gen, meter)
        levels.append(
            {
                "concurrency": level,
                "file": plan.file,
                "profile": profile.to_dict(),
                "client_cpu_s": round(result.cpu_s, 3),
                "metrics_before": result.server_before,
                "metrics_after": result.server_after,
            }
        )
    return {
        "status": "done",
        "prompts": "synthetic" if tokenizer is not None else "the run's own",
        "input_tokens": config.input_tokens,
        "output_tokens": config.output_tokens,
        "ignore_eos": backend.supports_ignore_eos,
        "replica": backend.base_url,
        "levels": levels,
        "notes": notes,
    }


class PhaseGate:
    """When a target's speed phase may run: one at a time, and with targets in parallel only once
    every accuracy pass of the call has ended, so that nothing else reaches any server while one
    is measured. Made per call (its lock and event belong to that call's event loop)."""

    def __init__(self, targets: Collection[str], wait_for_all: bool) -> None:
        self._left = set(targets)
        self._wait_for_all = wait_for_all
        self._lock = asyncio.Lock()
        self._all_ended = asyncio.Event()
        if not self._left:
            self._all_ended.set()

    def pass_ended(self, target: str) -> None:
        """``target``'s accuracy pass is over, however it ended (idempotent)."""
        self._left.discard(target)
        if not self._left:
            self._all_ended.set()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold this while a phase runs."""
        if self._wait_for_all:
            await self._all_ended.wait()
        async with self._lock:
            yield


async def measure(
    target: TargetConfig,
    backends: Sequence[Backend],
    manifest: Manifest,
    samples: Mapping[str, Sequence[Sample]],
    store: RunStore,
    progress: Progress,
    tokenizer_path: Callable[[TargetConfig], Path | None],
    meter: Meter | None = None,
) -> dict[str, Any]:
    """A bench target's speed phase, at its concurrency, with its model's tokenizer (the first of
    the model's targets that names one, so that every row of a model gets the same prompts), else
    the run's own prompts (``samples``, picked by seed alike for every row)."""

    def fallback(n: int, seed: int) -> Prompts:
        pool = [s for found in samples.values() for s in found]
        rng = random.Random(seed)
        return [pool[rng.randrange(len(pool))].messages for _ in range(n)]

    donor = next((t for t in manifest.targets if t.model == target.model and (t.tokenizer or t.model_id)), None)
    concurrency = target.concurrency or manifest.client.concurrency
    return await run_phase(
        target, backends, concurrency, manifest.speed_phase, manifest.generation, store, progress, tokenizer_path,
        fallback, donor, meter,
    )  # fmt: skip


def workload_digest(records: Sequence[LoadRecord]) -> str | None:
    """The prompts sent, in order, and the output length asked: equal digests, same workload."""
    ordered = sorted(records, key=lambda r: r.index)
    if not ordered or any(r.prompt_digest is None for r in ordered):
        return None
    asked = {r.request.get("max_tokens") or r.request.get("max_new_tokens") for r in ordered if r.request}
    text = "|".join(str(r.prompt_digest) for r in ordered) + f"|{sorted(map(str, asked))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def phase_figures(
    store: RunStore, target: str, facts: dict[str, Any] | None, managed: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A target's speed phase reduced (report.json's ``speed_phase``): per level its throughput,
    latencies and real lengths through the load test's metric pipeline, and who set its pace (the
    one builder, saturation.assess: is the figure the server's, or the client's); None without a
    phase. ``managed``: a managed server's launch (its slots)."""
    from orchestrator.loadtest import level_metrics
    from orchestrator.saturation import assess, core_share

    if not facts or facts.get("status") != "done":
        return None
    levels = []
    for lv in facts["levels"]:
        records = store.level_records(target, lv["file"], SETUP)
        profile = LoadProfile.from_dict(lv["profile"])
        m = level_metrics(records, profile)
        ok = [r for r in records if r.measured and r.timed]
        inputs = [n for r in ok if (n := r.prompt_tokens or (r.prompt_token_counts or {}).get("tokenizer"))]
        tpot = m["tpot_ms"]["p50"]
        timed = [r.timing for r in records if r.timing is not None]
        wall = max(t.wall_end for t in timed) - min(t.wall_send for t in timed) if timed else None
        pace = (
            assess(
                functools.partial(_median, m),
                core_share(lv.get("client_cpu_s"), wall),
                (m.get("queue_ms") or {}).get("p50"),
                managed,
                lv.get("metrics_before"),
                lv.get("metrics_after"),
            )
            if m["completed"]
            else None
        )
        levels.append(
            {
                "concurrency": lv["concurrency"],
                "completed": m["completed"],
                "failed": m["failed"],
                "requests_per_s": m["request_throughput"],
                "output_tokens_per_s": m["output_throughput"],
                "ttft_p50_ms": m["ttft_ms"]["p50"],
                "ttft_p90_ms": m["ttft_ms"].get("p90"),
                "tpot_p50_ms": tpot,
                "tpot_p90_ms": m["tpot_ms"].get("p90"),
                "e2e_p50_ms": m["e2el_ms"]["p50"],
                # The server's own time per token (llama-server's timings), where it gives one: beside
                # the client's, it tells a stream delivered in bursts (a client TPOT near 0).
                "server_tpot_p50_ms": (m.get("server_tpot_ms") or {}).get("p50"),
                "decode_tokens_per_s": 1000.0 / tpot if tpot else None,
                "mean_input_tokens": sum(inputs) / len(inputs) if inputs else None,
                "mean_output_tokens": m["mean_output_tokens"],
                # Replies that ran the full length asked (all of them where end-of-sequence is ignored).
                "full_length": sum(1 for r in ok if r.completion_tokens == profile.output_tokens) / len(ok)
                if ok
                else None,
                "workload": workload_digest(records),
                "saturation": pace,
            }
        )
    return {
        "prompts": facts.get("prompts"),
        "input_tokens": facts.get("input_tokens"),
        "output_tokens": facts.get("output_tokens"),
        "ignore_eos": facts.get("ignore_eos"),
        "notes": facts.get("notes") or [],
        "levels": levels,
    }


def _median(metrics: dict[str, Any], name: str) -> float | None:
    """A level's median of one latency (its ``metrics.LATENCIES`` name), where it has one."""
    found = metrics.get(name) or {}
    value = found.get("p50")
    return None if value is None else float(value)


def main_level(phase: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The level at the run's concurrency (the first), whose figures the main table shows."""
    return phase["levels"][0] if phase and phase.get("levels") else None


def batch1_level(phase: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The batch-1 level (the roofline's): the last, at concurrency 1."""
    levels = (phase or {}).get("levels") or []
    return next((lv for lv in reversed(levels) if lv["concurrency"] == 1), None)
