"""The only place with concurrency: bounded in-flight requests per target, retries, records.

Per target, a semaphore is acquired *before* a sample's task is created, so at most
``concurrency`` requests (and tasks) exist at once whatever the benchmark size. Transient
failures are retried with jittered exponential backoff; everything else fails the sample, which
is recorded as an error (never as a wrong answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay

from orchestrator.backends import Backend, BackendError, ChatRequest, Completion, open_backends
from orchestrator.backends.launch import LaunchError, LlamaCppServer, ServerDied, resolve_model
from orchestrator.errors import StoreError
from orchestrator.manifest import Manifest, TargetConfig
from orchestrator.scoring import ScoringProcess
from orchestrator.secrets import split_credentials
from orchestrator.setups import SETUP_VERSIONS, store_key
from orchestrator.store import SYNC_INTERVAL, RunStore
from orchestrator.tasks import DataError, Sample, Task
from orchestrator.tokenizer import load_tokenizer


class Progress(Protocol):
    """What the runner reports while it works (the CLI renders it with rich)."""

    def add(self, key: str, description: str, total: int, done: int) -> None:
        """A new bar: ``done`` of ``total`` samples are already on disk."""

    def advance(self, key: str, error: bool) -> None:
        """One sample ended."""

    def started(self, key: str) -> None:
        """A request was sent (live in-flight count)."""

    def status(self, text: str) -> None:
        """A one-line status message."""

    def abort(self, key: str, reason: str) -> None:
        """A bar whose target stopped early (its server died, its error budget ran out)."""


class NullProgress:
    """Progress that shows nothing (tests, scripts)."""

    def add(self, key: str, description: str, total: int, done: int) -> None:
        """Ignore."""

    def advance(self, key: str, error: bool) -> None:
        """Ignore."""

    def started(self, key: str) -> None:
        """Ignore."""

    def status(self, text: str) -> None:
        """Ignore."""

    def abort(self, key: str, reason: str) -> None:
        """Ignore."""


class ErrorBudgetExceeded(Exception):
    """A target failed more samples than the error threshold allows."""

    def __init__(self, total: int, threshold: float) -> None:
        super().__init__(f"more than {threshold:.0%} of {total} samples failed")
        self.total = total
        self.threshold = threshold


@dataclass
class TargetOutcome:
    """How one target's run ended."""

    name: str
    sent: int = 0
    errors: int = 0
    failure: str | None = None  # why the target stopped early, if it did
    last_error: str | None = None
    server: dict[str, Any] = field(default_factory=dict)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.transient


async def launch_server(
    target: TargetConfig, manifest: Manifest, store: RunStore, progress: Progress, model_path: Path | None = None
) -> LlamaCppServer:
    """Start a managed llama.cpp server for a target and wait until it serves (``model_path``:
    already resolved before the run, else located or downloaded now)."""
    assert target.launch is not None
    if model_path is None:
        progress.status(f"{target.name}: locating model")
        model_path = await asyncio.to_thread(resolve_model, target.launch, manifest.resolve_path)
    server = LlamaCppServer(target.name, target.launch, model_path, store.server_log(target.name))

    def waiting(elapsed: float) -> None:
        progress.status(f"{target.name}: waiting for llama.cpp server on {server.url} ({elapsed:.0f} s)")

    try:
        await server.start(waiting)
    except BaseException:
        await server.stop()
        raise
    progress.status(f"{target.name}: server up on {server.url}")
    return server


async def wait_healthy(target: TargetConfig, url: str, limit_s: float, progress: Progress) -> None:
    """Poll /health (or /v1/models for servers without it) until it answers 200, or time out."""
    started = time.monotonic()
    last = "no answer yet"
    url, credentials = split_credentials(url)
    auth = aiohttp.BasicAuth(*credentials) if credentials else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            for path in ("/health", "/v1/models"):
                try:
                    async with session.get(f"{url}{path}", auth=auth) as resp:
                        if resp.status == 200:
                            return
                        last = f"{path} answered HTTP {resp.status}"
                        if resp.status != 404:
                            break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    break
            elapsed = time.monotonic() - started
            if elapsed > limit_s:
                raise LaunchError(f"service {target.name} at {url} not healthy after {limit_s:.0f} s ({last})")
            progress.status(f"waiting for {target.name} at {url} to be healthy ({elapsed:.0f} s)")
            await asyncio.sleep(1.0)


@dataclass
class Serving:
    """A target ready to take requests: its adapters (one per replica) and, if managed, its server."""

    backends: list[Backend]
    urls: list[str]
    server: LlamaCppServer | None


@contextlib.asynccontextmanager
async def serving(
    target: TargetConfig,
    manifest: Manifest,
    store: RunStore,
    progress: Progress,
    tokenizer_path: Callable[[TargetConfig], Path | None],
    model_path: Path | None = None,
) -> AsyncIterator[Serving]:
    """Start (managed) or wait for (health_timeout) a target's servers, open its adapters; always clean up."""
    server: LlamaCppServer | None = None
    backends: list[Backend] = []
    try:
        urls = list(target.urls) or ([target.url] if target.url else [])
        if target.launch is not None:
            server = await launch_server(target, manifest, store, progress, model_path)
            urls = [server.url]
        elif manifest.load.health_timeout > 0:
            await asyncio.gather(*(wait_healthy(target, u, manifest.load.health_timeout, progress) for u in urls))
        backends = await open_backends(target, urls, manifest.load, tokenizer_path(target))
        yield Serving(backends, urls, server)
    finally:
        if backends:
            await backends[0].close()  # the replicas share this one session
        if server is not None:
            progress.status(f"stopping llama.cpp server of {target.name}")
            await server.stop()


async def _unless_dead(work: Coroutine[Any, Any, None], server: LlamaCppServer) -> None:
    """Run ``work`` while watching the managed server: if the server exits first, the work is
    cancelled at once (in-flight samples are not written, nor retried into errors) and
    :class:`ServerDied` says how it died."""
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(server.watch())
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done() and not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
            raise watcher.result()
        await job  # finished (or failed) on its own
    finally:
        for fut in (job, watcher):
            fut.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(job, watcher, return_exceptions=True)


# Descriptors beyond one socket per request: Python, the store's files, logs, the scoring
# process's pipes, servers' health checks. Measured about 40 here; doubled for safety.
FD_RESERVE = 80


def fd_capped_concurrency(concurrency: int, sessions: int, notes: list[str]) -> int:
    """The concurrency the open-file limit allows (``sessions`` pools of ``concurrency`` sockets
    each), after raising the soft limit as far as the hard one allows."""
    try:
        import resource
    except ImportError:  # not on Windows
        return concurrency
    need = concurrency * sessions + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            notes.append(f"open-file limit raised from {soft} to {new} for {concurrency} requests in flight")
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return concurrency
    capped = max(1, (soft - FD_RESERVE) // sessions)
    notes.append(
        f"open-file limit {soft} (hard {hard}) leaves room for {capped} requests in flight, not {concurrency}: "
        f"concurrency capped to {capped} (raise it with `ulimit -n {need}`)"
    )
    return capped


@contextlib.asynccontextmanager
async def synced(store: RunStore) -> AsyncIterator[None]:
    """fsync the store's new records every half SYNC_INTERVAL, in a thread, and once at the end.

    In a thread because fsync can take milliseconds on a busy disk, and every stream in flight
    would be stamped that much late if the event loop waited for it.
    """

    async def tick() -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL / 2)
            await asyncio.to_thread(store.sync)

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        store.sync()  # waits for a sync still running in the thread (the writers' lock)


class Runner:
    """Runs a manifest's tasks against its targets and writes one record per sample."""

    def __init__(
        self,
        manifest: Manifest,
        tasks: list[Task],
        store: RunStore,
        progress: Progress | None = None,
        tokenizer_path: Callable[[TargetConfig], Path | None] | None = None,
        retry_wait_max: float = 8.0,
        model_paths: dict[str, Path] | None = None,
    ) -> None:
        self.manifest = manifest
        # Samples files are keyed by the setup's version: two protocols never share a file.
        self.store_key = store_key(SETUP_VERSIONS[manifest.run.setup])
        self.model_paths = model_paths or {}  # managed targets' GGUF files, resolved before the run
        self.notes: list[str] = []  # what the run had to adapt to (printed and kept in run.json)
        self.in_flight = 0  # samples sent and not yet written
        self.written = 0  # records written by this session
        self.unwritten = 0  # when the disk failed: answers that could not be written, in flight included
        self.tasks = tasks
        self.store = store
        self.progress = progress or NullProgress()
        self.tokenizer_path = tokenizer_path or (lambda t: None)
        self.retry_wait_max = retry_wait_max
        self._samples = {task.name: task.samples() for task in tasks}
        # Heavy scorers (IFEval's checkers: milliseconds of pure Python per reply) run in one
        # process of their own. In a thread here they would take the GIL from the event loop for
        # up to 5 ms at a time, and stream stamps due meanwhile would be late: measured at c=64
        # beside 3.5 ms of scoring every 23.5 ms, p99 TTFT/ITL/E2E error 3.8/4.7/5.3 ms with a
        # thread, 1.0/2.5/2.1 ms with a process (benchmarks/timing_accuracy.py, 2 cores).
        self._scoring: ScoringProcess | None = None

    @property
    def samples(self) -> dict[str, list[Sample]]:
        """Samples per task, as they will be sent."""
        return self._samples

    def _prepare_files(self) -> None:
        """Open every samples file this run will write before the first request, and make sure
        the open-file limit leaves room for one socket per request in flight: raise the soft
        limit when the hard one allows, else cap the concurrency and say so. (Opened only when a
        first request finished, a samples file could meet EMFILE after a thousand sockets.)"""
        setup = self.store_key
        for target in self.manifest.targets:
            for task in self.tasks:
                if self._samples[task.name]:
                    self.store.writer(target.name, task.name, setup)
        load = self.manifest.load
        parallel = len(self.manifest.targets) if load.targets_in_parallel else 1
        replicas = max(len(t.urls) or 1 for t in self.manifest.targets)
        capped = fd_capped_concurrency(load.concurrency, parallel * replicas, self.notes)
        if capped != load.concurrency:
            self.manifest = dataclasses.replace(self.manifest, load=dataclasses.replace(load, concurrency=capped))

    async def run(self) -> list[TargetOutcome]:
        """Run every target (in parallel or in turn, as the manifest says)."""
        self._prepare_files()
        heavy = next((t for t in self.tasks if hasattr(t, "score_job") and self._samples[t.name]), None)
        if heavy is not None:
            self._scoring = ScoringProcess()
            await self._scoring.start()
            # Warm the process up (imports, checkers, NLTK's model) while the first requests run.
            fn, args = heavy.score_job(self._samples[heavy.name][0], "")
            warm = self._scoring.submit(fn, *args)
            warm.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure shows on real jobs
        try:
            async with synced(self.store):
                if self.manifest.load.targets_in_parallel:
                    try:
                        async with asyncio.TaskGroup() as tg:
                            jobs = [tg.create_task(self._run_target(t)) for t in self.manifest.targets]
                    except* StoreError as group:
                        raise group.exceptions[0] from None
                    return [j.result() for j in jobs]
                return [await self._run_target(t) for t in self.manifest.targets]
        finally:
            if self._scoring is not None:
                await self._scoring.close()

    async def _run_target(self, target: TargetConfig) -> TargetOutcome:
        outcome = TargetOutcome(target.name)
        setup = self.store_key
        work: list[tuple[Task, Sample]] = []
        for task in self.tasks:
            done = self.store.completed_ids(target.name, task.name, setup)
            pending = [s for s in self._samples[task.name] if s.id not in done]
            self.progress.add(
                f"{target.name}/{task.name}",
                f"{target.name} · {task.name}",
                len(self._samples[task.name]),
                len(self._samples[task.name]) - len(pending),
            )
            work += [(task, s) for s in pending]
        if not work:
            return outcome
        try:
            model_path = self.model_paths.get(target.name)
            async with serving(
                target, self.manifest, self.store, self.progress, self.tokenizer_path, model_path
            ) as live:
                backends = live.backends
                if live.server is not None:
                    outcome.server["managed"] = {
                        "command": live.server.command(),
                        "log": str(live.server.log_path),
                        "build": list(live.server.build.features),
                    }
                outcome.server.update(await backends[0].describe())
                outcome.server["served_model"] = backends[0].model
                outcome.server["backend"] = target.backend
                outcome.server["version"] = await backends[0].server_version()
                if outcome.server["version"] is None and live.server is not None and live.server.build.version:
                    # llama-cpp-python's server does not say its version; the launcher knows it.
                    outcome.server["version"] = f"llama-cpp-python {live.server.build.version}"
                outcome.server["replicas"] = [b.base_url for b in backends]
                # The server's own counters around the run (vLLM vllm:*, TGI tgi_*), for cross-checks.
                outcome.server["metrics_before"] = await backends[0].scrape_metrics()
                if live.server is None:
                    await self._run_samples(target, backends, work, outcome, None)
                else:
                    await _unless_dead(self._run_samples(target, backends, work, outcome, live.server), live.server)
                outcome.server["metrics_after"] = await backends[0].scrape_metrics()
        except* StoreError as group:
            raise group.exceptions[0] from None  # the disk, not this target: the run stops
        except* ErrorBudgetExceeded as group:
            exc = group.exceptions[0]
            assert isinstance(exc, ErrorBudgetExceeded)
            outcome.failure = (
                f"{target.name}: {outcome.errors} of {exc.total} samples failed (threshold {exc.threshold:.0%}); "
                f"last error: {outcome.last_error}"
            )
        except* ServerDied as group:
            outcome.failure = str(group.exceptions[0])
        except* (BackendError, LaunchError, DataError) as group:
            outcome.failure = f"{target.name}: {group.exceptions[0]}"
        if outcome.failure:
            for task in self.tasks:
                self.progress.abort(f"{target.name}/{task.name}", outcome.failure)
        return outcome

    async def _run_samples(
        self,
        target: TargetConfig,
        backends: list[Backend],
        work: list[tuple[Task, Sample]],
        outcome: TargetOutcome,
        server: LlamaCppServer | None,
    ) -> None:
        load = self.manifest.load
        gen = self.manifest.generation
        setup = self.store_key
        # The run fails once errors exceed the threshold of what this run sends; stop there.
        budget = load.error_threshold * len(work)
        sem = asyncio.Semaphore(load.concurrency)

        outstanding = [0] * len(backends)

        async def one(task: Task, sample: Sample) -> None:
            # Least outstanding requests first: a slow replica gets less work, not the same share.
            replica = min(range(len(backends)), key=outstanding.__getitem__)
            outstanding[replica] += 1
            self.in_flight += 1
            try:
                request = ChatRequest(sample.messages, task.max_tokens, gen.seed, gen.temperature, stream=gen.stream)
                self.progress.started(f"{target.name}/{task.name}")
                record = await self._attempt(backends[replica], task, sample, request)
                if record["error"] is not None and server is not None and await server.dead_within(1.0):
                    # The managed server crashed under this request: not the sample's failure. It
                    # stays unanswered (sent again on resume) and the watcher stops the target.
                    raise server.death()
                record["target"] = target.name
                if len(backends) > 1:
                    record["replica"] = backends[replica].base_url
                record["setup"] = SETUP_VERSIONS[self.manifest.run.setup]
                try:
                    self.store.writer(target.name, task.name, setup).write(record)
                except StoreError:
                    self.unwritten = self.in_flight  # this answer, and every one still in flight
                    raise
                self.written += 1
                outcome.sent += 1
                failed = record["error"] is not None
                outcome.errors += failed
                self.progress.advance(f"{target.name}/{task.name}", failed)
                if failed:
                    outcome.last_error = record["error"]
                if failed and outcome.errors > budget:
                    # The message is written when the target has stopped (see _run_target), so that it
                    # counts every error record on disk, those of requests ending meanwhile too.
                    raise ErrorBudgetExceeded(len(work), load.error_threshold)
            finally:
                outstanding[replica] -= 1
                self.in_flight -= 1
                sem.release()

        async with asyncio.TaskGroup() as tg:
            for task, sample in work:
                await sem.acquire()
                tg.create_task(one(task, sample))

    def _retry_wait(self, state: RetryCallState) -> float:
        """Exponential backoff with equal jitter, or what the server's Retry-After asks if longer
        (never past the request timeout)."""
        backoff = min(self.retry_wait_max, 0.5 * 2.0 ** (state.attempt_number - 1))
        wait = backoff / 2 + random.uniform(0, backoff / 2)
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            wait = max(wait, min(float(asked), self.manifest.load.request_timeout))
        return wait

    async def _attempt(self, backend: Backend, task: Task, sample: Sample, request: ChatRequest) -> dict[str, Any]:
        attempts = 0
        load = self.manifest.load
        record: dict[str, Any] = {
            "id": sample.id,
            "task": task.name,
            "subject": sample.subject,
            "prompt_digest": sample.prompt_digest(),
            "gold": sample.target,
        }
        resends = 0  # at-once resends inside attempts (a kept-alive connection the server had closed)

        async def send() -> Completion:
            nonlocal resends
            try:
                done = await backend.generate(request)
            except BackendError as exc:
                resends += exc.resends
                raise
            resends += done.stamps.resends
            return done

        try:
            try:
                attempts = 1
                completion = await send()
            except BackendError as first:
                if not first.transient or load.retries == 0:
                    raise
                # Only a failed request pays for the retry machinery (the hot path stays lean). The
                # first failure is replayed as tenacity's attempt 1, so backoff starts from it.
                retrying = AsyncRetrying(
                    retry=retry_if_exception(_is_transient),
                    stop=stop_after_attempt(load.retries + 1) | stop_before_delay(load.retry_budget),
                    wait=self._retry_wait,
                    reraise=True,
                )
                replay: BackendError | None = first
                async for attempt in retrying:
                    with attempt:
                        if replay is not None:
                            failure, replay = replay, None
                            raise failure from None  # the original failure, as it was
                        attempts += 1
                        completion = await send()
        except BackendError as exc:
            record.update(
                request=backend.build_body(request),
                error=str(exc),
                error_kind="transient" if exc.transient else "fatal",
                error_type=exc.kind,
                status=exc.status,
                attempts=attempts + resends,
                resends=resends,
                reply=None,
                correct=None,
                extracted=None,
                rule=None,
            )
            return record
        if self._scoring is not None and hasattr(task, "score_job"):
            fn, args = task.score_job(sample, completion.text)
            score = await self._scoring.run(fn, *args)
        else:
            score = task.score(sample, completion.text)
        record.update(
            request=completion.request,
            reply=completion.text,
            raw=completion.raw,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            token_source=completion.token_source,
            token_counts=completion.token_counts,
            timing=completion.stamps.to_record(),
            extracted=score.extracted,
            resends=resends,
            rule=score.rule,
            correct=score.correct,
            score_details=score.details,
            error=None,
            # Every time the request was sent, the at-once resend after a closed connection included.
            attempts=attempts + resends,
        )
        return record


# ---------------------------------------------------------------------------------------------
# Load tests
# ---------------------------------------------------------------------------------------------
@dataclass
class LevelResult:
    """One level of a load test on one target."""

    target: str
    mode: str
    level: float
    records: list[dict[str, Any]]
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
        profile: Any,
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

    def _size_sessions(self) -> None:
        """The connection pool holds the largest level (a closed loop's concurrency, a rate mode's
        cap, or no bound), never the accuracy run's ``load.concurrency``, which would otherwise
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
        load = dataclasses.replace(self.manifest.load, concurrency=need)
        self.manifest = dataclasses.replace(self.manifest, load=load)

    async def run(self) -> list[LevelResult]:
        """Every level of every target, targets one after the other (they would compete otherwise)."""
        self._size_sessions()
        results: list[LevelResult] = []
        async with synced(self.store):
            for target in self.manifest.targets:
                results += await self._run_target(target)
        return results

    def _tokenizer(self, target: TargetConfig) -> Any:
        source = target.tokenizer or target.model_id
        if source is None:
            raise LaunchError(
                f"{target.name}: synthetic prompts need the model's tokenizer (set tokenizer or model_id)"
            )
        return load_tokenizer(source, self.tokenizer_path(target))

    async def _run_target(self, target: TargetConfig) -> list[LevelResult]:
        from orchestrator.loadtest import schedule

        profile = self.profile
        results: list[LevelResult] = []
        try:
            async with serving(target, self.manifest, self.store, self.progress, self.tokenizer_path) as live:
                backend = live.backends[0]  # load tests measure one server: the first replica
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
                    counts = _prompt_counts(tokenizer, template, prompts)
                    probe = await self._level(target, backend, "concurrency", probe_c, prompts, [], counts)
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
                    counts = _prompt_counts(tokenizer, template, prompts)
                    results.append(await self._level(target, backend, mode, level, prompts, offsets, counts))
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
        """The model's chat template, to know each prompt's token count as the server will see it."""
        from orchestrator.backends.tgi import ChatTemplate

        path = self.tokenizer_path(target)
        source = str(path) if path is not None else (target.tokenizer or target.model_id)
        try:
            return ChatTemplate.load(source) if source else None
        except Exception:  # no template anywhere: prompt counts are then not cross-checked
            return None

    async def _level(
        self,
        target: TargetConfig,
        backend: Backend,
        mode: str,
        level: float,
        prompts: list[tuple[tuple[str, str], ...]],
        offsets: list[float],
        prompt_counts: list[int | None],
    ) -> LevelResult:
        profile = self.profile
        gen = self.manifest.generation
        key = f"{target.name}/{mode}-{level:g}"
        self.progress.add(key, f"{target.name} · {mode} {level:g}", len(prompts), 0)
        writer = self.store.writer(target.name, f"load-{mode}-{level:g}", "load")
        records: list[dict[str, Any]] = []
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
            record: dict[str, Any] = {
                "index": i,
                "warmup": i < profile.warmup,
                "cooldown": i >= profile.warmup + profile.requests,
                "mode": mode,
                "level": level,
                "dispatch_lag": None if intended is None else round(wake - intended, 6),
            }
            self.progress.started(key)
            try:
                completion = await backend.generate(request)
            except BackendError as exc:
                record.update(error=str(exc), queued=round(time.perf_counter() - wake, 6), timing=None)
            else:
                record.update(
                    error=None,
                    # Waiting for a slot, a late loop and building the request: all client-side.
                    queued=round((completion.stamps.t_wire or completion.stamps.t_send) - wake, 6),
                    # From the reply's last byte to the slot being freed (just below): decoding, counting.
                    post=round(time.perf_counter() - completion.stamps.t_end, 6),
                    timing=completion.stamps.to_record(),
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    token_source=completion.token_source,
                    token_counts=completion.token_counts,
                    prompt_token_counts={
                        k: v
                        for k, v in (("usage", completion.prompt_tokens), ("tokenizer", prompt_counts[i]))
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
            self.progress.advance(key, record["error"] is not None)

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
                intended = start + offsets[i]
                if deadline is not None and intended > deadline:
                    break  # scheduled after the level's end
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tg.create_task(one(i, time.perf_counter(), intended))
        cpu = time.process_time() - cpu0
        writer.sync()
        server_after = await backend.scrape_metrics()
        return LevelResult(target.name, mode, level, records, cpu, server_before, server_after)


def _prompt_counts(tokenizer: Any, template: Any, prompts: list[tuple[tuple[str, str], ...]]) -> list[int | None]:
    """Tokens of each chat-templated prompt with the model's tokenizer (computed before sending)."""
    if template is None:
        return [None] * len(prompts)
    return [len(tokenizer.encode(template.render(p), add_special_tokens=False).ids) for p in prompts]
