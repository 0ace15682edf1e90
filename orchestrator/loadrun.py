"""The load-test driver: synthetic (or a benchmark's) prompts at fixed concurrencies or scheduled
rates, one record of raw stamps per request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends import Backend, BackendError, ChatRequest
from orchestrator.llamacpp import LaunchError
from orchestrator.manifest import GenerationConfig, LoadProfile, Manifest, TargetConfig
from orchestrator.meter import Meter, metering, nvml_opened
from orchestrator.nvml import Nvml
from orchestrator.records import LoadRecord
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.serving import NullProgress, Progress, fd_capped_concurrency, serving
from orchestrator.store import RunStore
from orchestrator.tasks.base import messages_digest
from orchestrator.tokenizer import load_tokenizer


@dataclass
class LevelResult:
    """One level of a load test on one target."""

    target: str
    mode: str
    level: float
    records: list[LoadRecord]
    cpu_s: float
    server_before: dict[str, float] | None
    server_after: dict[str, float] | None


class LoadRunner:
    """Sends synthetic requests at fixed concurrencies or scheduled rates and records raw stamps.

    Rate-based sends are scheduled against absolute deadlines from the level's start (never
    sleep-after-send), so a slow server cannot slow the schedule down; a request that must wait
    for a free slot (``max_concurrency``) or for a late event loop records that wait as queue time
    and dispatch lag, apart from its latencies.
    """

    def __init__(
        self,
        manifest: Manifest,
        profile: LoadProfile,
        store: RunStore,
        progress: Progress | None = None,
        tokenizer_path: Callable[[TargetConfig], Path | None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.profile = profile
        self.store = store
        self.progress = progress or NullProgress()
        self.tokenizer_path = tokenizer_path or (lambda t: None)
        self.notes: dict[str, list[str]] = {}
        self.servers: dict[str, dict[str, Any]] = {}  # a managed server's launch, its footprint, per target
        self._nvml: tuple[Nvml | None, str | None] = (None, None)

    def _size_sessions(self) -> None:
        """The connection pool holds the largest level (a closed loop's concurrency, a rate mode's
        cap, or no bound), never the accuracy run's ``client.concurrency``, which would otherwise
        queue requests in the client and pass that wait off as a lower throughput."""
        profile = self.profile
        if profile.mode == "concurrency" or profile.auto:
            need = int(max(profile.levels)) if profile.levels else 64
        else:
            need = profile.max_concurrency or 0  # 0: aiohttp's "no limit"
        notes: list[str] = []
        if need:
            fd_capped_concurrency(need, 1, notes)
        if notes:
            for target in self.manifest.targets:
                self.notes.setdefault(target.name, []).extend(notes)
        client = dataclasses.replace(self.manifest.client, concurrency=need)
        self.manifest = dataclasses.replace(self.manifest, client=client)

    async def run(self) -> list[LevelResult]:
        """Every level of every target, targets one after the other (they would compete otherwise)."""
        self._size_sessions()
        results: list[LevelResult] = []
        with nvml_opened(self.notes.setdefault("all targets", [])) as self._nvml:
            async with open_runtime(self.store) as runtime:
                for target in self.manifest.targets:
                    results += await self._run_target(target, runtime)
        if not self.notes["all targets"]:
            del self.notes["all targets"]
        return results

    def _tokenizer(self, target: TargetConfig) -> Any:
        return target_tokenizer(target, self.tokenizer_path)

    async def _run_target(self, target: TargetConfig, runtime: Runtime) -> list[LevelResult]:
        from orchestrator.loadtest import schedule

        profile = self.profile
        results: list[LevelResult] = []
        try:
            facts = self.servers.setdefault(target.name, {})
            async with (
                serving(
                    target, self.manifest, self.store, self.progress, self.tokenizer_path, pacer=runtime.pacer
                ) as live,
                metering(target, live, self._nvml, None, facts) as meter,
            ):
                backend = live.backends[0]  # load tests measure one server: the first replica
                if live.managed is not None:
                    facts.update(live.managed)
                if live.note:
                    self.notes.setdefault(target.name, []).append(live.note)
                if profile.ignore_eos and not backend.supports_ignore_eos:
                    self.notes.setdefault(target.name, []).append(
                        f"backend {target.backend} cannot ignore end-of-sequence: outputs may be shorter than "
                        f"{profile.output_tokens} tokens (the measured lengths are reported)"
                    )
                tokenizer = await asyncio.to_thread(self._tokenizer, target)
                template = await asyncio.to_thread(self._template, target)
                per_level = profile.warmup + profile.requests
                levels = list(profile.levels)
                mode = profile.mode
                if profile.auto:
                    # Saturation first: a closed loop at high concurrency, then rates up to its throughput.
                    probe_c = int(max(profile.levels)) if profile.levels else 64
                    prompts = self._prompts(tokenizer, per_level, profile.seed)
                    counts = prompt_counts(tokenizer, template, prompts)
                    probe = await self._level(target, backend, "concurrency", probe_c, prompts, [], counts, meter)
                    results.append(probe)
                    from orchestrator.loadtest import level_metrics

                    saturation = level_metrics(probe.records, profile)["request_throughput"] or 1.0
                    mode = "poisson" if profile.mode == "poisson" else "constant"
                    levels = [round(saturation * f, 3) for f in (0.25, 0.5, 0.75, 1.0)]
                for i, level in enumerate(levels):
                    # A closed loop gets as many cool-down requests as slots: they keep every slot busy
                    # until the last measured request ends, so the measured window is all steady state.
                    n = per_level + (int(level) if mode == "concurrency" else 0)
                    prompts = self._prompts(tokenizer, n, profile.seed + 1 + i)
                    offsets = [] if mode == "concurrency" else schedule(mode, level, n, profile.seed + i)
                    counts = prompt_counts(tokenizer, template, prompts)
                    results.append(await self._level(target, backend, mode, level, prompts, offsets, counts, meter))
        except* (BackendError, LaunchError) as group:
            self.notes.setdefault(target.name, []).append(f"failed: {group.exceptions[0]}")
        return results

    def _prompts(self, tokenizer: Any, n: int, seed: int) -> list[tuple[tuple[str, str], ...]]:
        """Chat turns to send: synthetic prompts of exact token length, or a benchmark's own."""
        from orchestrator.loadtest import synthetic_prompts, task_prompts

        if self.profile.prompts == "synthetic":
            return [(("user", p),) for p in synthetic_prompts(tokenizer, n, self.profile.input_tokens, seed)]
        data_dir = self.manifest.resolve_path(self.manifest.run.data_dir) if self.manifest.run.data_dir else None
        return task_prompts(self.profile.prompts, data_dir, n, seed)

    def _template(self, target: TargetConfig) -> Any:
        return chat_template(target, self.tokenizer_path)

    async def _level(
        self,
        target: TargetConfig,
        backend: Backend,
        mode: str,
        level: float,
        prompts: list[tuple[tuple[str, str], ...]],
        offsets: list[float],
        counts: list[int | None],
        meter: Meter,
    ) -> LevelResult:
        return await run_level(
            LevelPlan(target.name, mode, level, prompts, offsets, counts, self.profile),
            backend,
            self.store,
            self.progress,
            self.manifest.generation,
            meter,
        )


@dataclass(frozen=True)
class LevelPlan:
    """What one level sends: its target, mode and level, the prompts (and a rate mode's send
    offsets), each prompt's token count, the profile that bounds it, and the records file it
    fills (``name``.``setup``.jsonl under the target's samples)."""

    target: str
    mode: str
    level: float
    prompts: list[tuple[tuple[str, str], ...]]
    offsets: list[float]
    prompt_counts: list[int | None]
    profile: LoadProfile
    name: str = ""
    setup: str = "load"

    @property
    def file(self) -> str:
        """The records file's task part."""
        return self.name or f"load-{self.mode}-{self.level:g}"


async def run_level(
    plan: LevelPlan,
    backend: Backend,
    store: RunStore,
    progress: Progress,
    gen: GenerationConfig,
    meter: Meter | None = None,
) -> LevelResult:
    """One level: a closed loop at ``plan.level`` requests in flight, or sends on a rate mode's
    schedule; one record of raw stamps per request, written as it ends. Used by ``orchestrate
    load`` and by the bench's speed phase alike. ``meter``: the level is an energy window of its
    own (named after its file), its work the requests answered and their output tokens."""
    window = contextlib.nullcontext(None) if meter is None else meter.window(plan.file)
    with window as measured:
        result = await _run_level(plan, backend, store, progress, gen)
        if measured is not None:
            answered = [r for r in result.records if r.error is None]
            measured.requests = len(answered)
            measured.output_tokens = sum(r.completion_tokens or 0 for r in answered)
    return result


async def _run_level(
    plan: LevelPlan, backend: Backend, store: RunStore, progress: Progress, gen: GenerationConfig
) -> LevelResult:
    profile, mode, level, prompts = plan.profile, plan.mode, plan.level, plan.prompts
    key = f"{plan.target}/{plan.file}"
    progress.add(key, f"{plan.target} · {plan.file}", len(prompts), 0)
    writer = store.writer(plan.target, plan.file, plan.setup)
    records: list[LoadRecord] = []
    server_before = await backend.scrape_metrics()
    cpu0 = time.process_time()
    cap = int(level) if mode == "concurrency" else profile.max_concurrency
    slots = asyncio.Semaphore(cap) if cap else None
    start = time.perf_counter() + 0.05
    deadline = None if profile.duration is None else start + profile.duration

    async def one(i: int, wake: float, intended: float | None) -> None:
        if slots is not None and mode != "concurrency":
            await slots.acquire()  # the client-side queue of a rate mode (max_concurrency)
            if deadline is not None and time.perf_counter() > deadline:
                slots.release()  # its slot came after the level ended: never sent
                return
        request = ChatRequest(
            prompts[i], profile.output_tokens, gen.seed, gen.temperature, ignore_eos=profile.ignore_eos
        )
        place: dict[str, Any] = {
            "index": i,
            "warmup": i < profile.warmup,
            "cooldown": i >= profile.warmup + profile.requests,
            "mode": mode,
            "level": level,
            "dispatch_lag": None if intended is None else round(wake - intended, 6),
            "prompt_digest": messages_digest(prompts[i]),
        }
        progress.started(key)
        try:
            completion = await backend.generate(request)
        except BackendError as exc:
            record = LoadRecord(**place, error=str(exc), queued=round(time.perf_counter() - wake, 6))
        else:
            record = LoadRecord(
                **place,
                # Waiting for a slot, a late loop and building the request: all client-side.
                queued=round((completion.stamps.t_wire or completion.stamps.t_send) - wake, 6),
                # From the reply's last byte to the slot being freed (just below): decoding, counting.
                post=round(time.perf_counter() - completion.stamps.t_end, 6),
                timing=completion.stamps.to_timing(),
                server_timing=completion.server_timing,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                token_source=completion.token_source,
                token_counts=completion.token_counts,
                prompt_token_counts={
                    k: v
                    for k, v in (("usage", completion.prompt_tokens), ("tokenizer", plan.prompt_counts[i]))
                    if v is not None
                },
                finish_reason=completion.finish_reason,
                request={k: v for k, v in completion.request.items() if k not in ("messages", "inputs")},
            )
        finally:
            if slots is not None:
                slots.release()
        records.append(record)
        writer.write(record)
        progress.advance(key, record.error is not None)

    async with asyncio.TaskGroup() as tg:
        for i in range(len(prompts)):
            if deadline is not None and time.perf_counter() > deadline:
                break
            if mode == "concurrency":
                assert slots is not None
                await slots.acquire()  # closed loop: the next request goes when a slot frees
                if deadline is not None and time.perf_counter() > deadline:
                    slots.release()  # the slot freed after the level ended: nothing more is sent
                    break
                tg.create_task(one(i, time.perf_counter(), None))
                continue
            intended = start + plan.offsets[i]
            if deadline is not None and intended > deadline:
                break  # scheduled after the level's end
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(one(i, time.perf_counter(), intended))
    cpu = time.process_time() - cpu0
    writer.sync()
    server_after = await backend.scrape_metrics()
    return LevelResult(plan.target, mode, level, records, cpu, server_before, server_after)


def target_tokenizer(target: TargetConfig, tokenizer_path: Callable[[TargetConfig], Path | None]) -> Any:
    """The model's tokenizer, which synthetic prompts are made of (a Hub id is fetched)."""
    source = target.tokenizer or target.model_id
    if source is None:
        raise LaunchError(f"{target.name}: synthetic prompts need the model's tokenizer (set tokenizer or model_id)")
    return load_tokenizer(source, tokenizer_path(target))


def chat_template(target: TargetConfig, tokenizer_path: Callable[[TargetConfig], Path | None]) -> Any:
    """The model's chat template, to know each prompt's token count as the server will see it."""
    from orchestrator.backends.tgi import ChatTemplate

    path = tokenizer_path(target)
    source = str(path) if path is not None else (target.tokenizer or target.model_id)
    try:
        return ChatTemplate.load(source) if source else None
    except Exception:  # no template anywhere: prompt counts are then not cross-checked
        return None


def prompt_counts(tokenizer: Any, template: Any, prompts: list[tuple[tuple[str, str], ...]]) -> list[int | None]:
    """Tokens of each chat-templated prompt with the model's tokenizer (computed before sending)."""
    if template is None or tokenizer is None:
        return [None] * len(prompts)
    return [len(tokenizer.encode(template.render(p), add_special_tokens=False).ids) for p in prompts]
