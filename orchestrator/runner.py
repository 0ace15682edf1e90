"""The accuracy run: the only place with concurrency for it: bounded in-flight requests per target, retries, records.

Per target, a semaphore is acquired *before* a sample's task is created, so at most
``concurrency`` requests (and tasks) exist at once whatever the benchmark size. Transient
failures are retried with jittered exponential backoff; everything else fails the sample, which
is recorded as an error (never as a wrong answer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay

from orchestrator.backends import Backend, BackendError, ChatRequest, Completion
from orchestrator.errors import ScoringError, StoreError
from orchestrator.llamacpp import LaunchError, ManagedServer, ServerDied
from orchestrator.manifest import Manifest, TargetConfig
from orchestrator.meter import metering, nvml_opened
from orchestrator.nvml import Nvml
from orchestrator.records import SampleRecord
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.scoring import ScoringProcessDied
from orchestrator.serving import NullProgress, Progress, fd_capped_concurrency, probe_logprobs, serving, unless_dead
from orchestrator.setups import SETUP_VERSIONS, store_key
from orchestrator.speedphase import PhaseGate, measure
from orchestrator.store import RunStore
from orchestrator.tasks import DataError, Sample, Score, Task


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
    output_tokens: int = 0  # of the answers this session sent (the energy's work)
    failure: str | None = None  # why the target stopped early, if it did
    last_error: str | None = None
    server: dict[str, Any] = field(default_factory=dict)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.transient


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
        speed_done: Collection[str] = (),
    ) -> None:
        self.manifest = manifest
        # Samples files are keyed by the setup's version: two protocols never share a file.
        self.store_key = store_key(SETUP_VERSIONS[manifest.run.setup])
        self.model_paths = model_paths or {}  # managed targets' GGUF files, resolved before the run
        self.notes: list[str] = []  # what the run had to adapt to (printed and kept in run.json)
        self._logprobs_cap: dict[str, int] = {}  # per target: the top-k its server really gives
        self.runtime: Runtime | None = None  # while the run runs: its pacer, scoring process, fsync ticker
        self.in_flight = 0  # samples sent and not yet written
        self.written = 0  # records written by this session
        self.unwritten = 0  # when the disk failed: answers that could not be written, in flight included
        self.tasks = tasks
        self.store = store
        self.progress = progress or NullProgress()
        self.tokenizer_path = tokenizer_path or (lambda t: None)
        self.retry_wait_max = retry_wait_max
        self._samples = {task.name: task.samples() for task in tasks}
        self.speed_done = set(speed_done)  # targets whose speed phase a session before this one measured
        self._gate = PhaseGate((), False)
        self._nvml: tuple[Nvml | None, str | None] = (None, None)  # while run() runs: NVML, or why not

    @property
    def samples(self) -> dict[str, list[Sample]]:
        """Samples per task, as they will be sent."""
        return self._samples

    def pending(self, target: str) -> int:
        """What a resumed run would send ``target``: its samples without an answered record, plus
        one for a speed phase not measured yet (a Compose turn with only that left is brought up)."""
        setup = self.store_key
        samples = sum(
            len(samples) - len({s.id for s in samples} & self.store.completed_ids(target, task, setup))
            for task, samples in self._samples.items()
        )
        config = next((t for t in self.manifest.targets if t.name == target), None)
        return samples + (config is not None and self._wants_speed_phase(config))

    def _prepare_files(self, targets: list[TargetConfig]) -> None:
        """Open every samples file this run will write before the first request, and make sure
        the open-file limit leaves room for one socket per request in flight: raise the soft
        limit when the hard one allows, else cap the concurrency and say so. (Opened only when a
        first request finished, a samples file could meet EMFILE after a thousand sockets.)"""
        setup = self.store_key
        for target in targets:
            for task in self.tasks:
                if self._samples[task.name]:
                    self.store.writer(target.name, task.name, setup)
        client = self.manifest.client
        parallel = len(targets) if client.targets_in_parallel else 1
        replicas = max(len(t.urls) or 1 for t in targets)
        capped = fd_capped_concurrency(client.concurrency, parallel * replicas, self.notes)
        if capped != client.concurrency:
            self.manifest = dataclasses.replace(self.manifest, client=dataclasses.replace(client, concurrency=capped))

    async def run(self, only: Collection[str] | None = None) -> list[TargetOutcome]:
        """Run every target, or those named in ``only`` (in parallel or in turn, as the manifest says)."""
        targets = [t for t in self.manifest.targets if only is None or t.name in only]
        if not targets:
            return []
        self._prepare_files(targets)
        # Made per call: each Compose turn runs in an event loop of its own.
        self._gate = PhaseGate([t.name for t in targets], self.manifest.client.targets_in_parallel)
        # Heavy scorers (IFEval's checkers: milliseconds of pure Python per reply) run in one
        # process of their own. In a thread here they would take the GIL from the event loop for
        # up to 5 ms at a time, and stream stamps due meanwhile would be late: measured at c=64
        # beside 3.5 ms of scoring every 23.5 ms, p99 TTFT/ITL/E2E error 3.8/4.7/5.3 ms with a
        # thread, 1.0/2.5/2.1 ms with a process (benchmarks/timing_accuracy.py, 2 cores).
        # The first heavy scorer's job on an empty reply: the scoring process warms up on it.
        heavy = (t.score_job(self._samples[t.name][0], "") for t in self.tasks if self._samples[t.name])
        warm_up = next((j for j in heavy if j is not None), None)
        with nvml_opened(self.notes) as self._nvml:
            async with open_runtime(self.store, warm_up) as runtime:
                self.runtime = runtime
                if self.manifest.client.targets_in_parallel:
                    try:
                        async with asyncio.TaskGroup() as tg:
                            jobs = [tg.create_task(self._run_target(t, runtime)) for t in targets]
                    except* (StoreError, ScoringError) as group:
                        raise group.exceptions[0] from None
                    return [j.result() for j in jobs]
                return [await self._run_target(t, runtime) for t in targets]

    async def _run_target(self, target: TargetConfig, runtime: Runtime) -> TargetOutcome:
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
        speed = self._wants_speed_phase(target)
        if not work and not speed:
            self._gate.pass_ended(target.name)
            return outcome
        try:
            path = self.model_paths.get(target.name)
            serve = serving(target, self.manifest, self.store, self.progress, self.tokenizer_path, path, runtime.pacer)
            async with serve as live, metering(target, live, self._nvml, path, outcome.server) as meter:
                backends = live.backends
                if live.managed is not None:
                    outcome.server["managed"] = live.managed
                if live.note:
                    self.notes.append(f"{target.name}: {live.note}")
                outcome.server.update(await backends[0].describe())
                outcome.server["served_model"] = backends[0].model
                outcome.server["backend"] = target.backend
                outcome.server["version"] = await backends[0].server_version()
                if outcome.server["version"] is None and live.server is not None and live.server.build.version:
                    # llama-cpp-python's server does not say its version; the launcher knows it.
                    outcome.server["version"] = f"{live.server.kind} {live.server.build.version}"
                outcome.server["replicas"] = [b.base_url for b in backends]
                try:
                    if work:
                        with meter.window("accuracy", work=lambda: (outcome.sent, outcome.output_tokens)):
                            await self._accuracy_pass(target, backends, work, outcome, live.server)
                finally:
                    self._gate.pass_ended(target.name)
                if speed:
                    async with self._gate.turn():
                        phase = measure(target, backends, self.manifest, self._samples, self.store, self.progress,
                                        self.tokenizer_path, meter)  # fmt: skip
                        facts = await (phase if live.server is None else unless_dead(phase, live.server))
                    outcome.server["speed_phase"] = facts
                    for note in facts["notes"]:
                        self.notes.append(f"{target.name}: speed phase: {note}")
        except* (StoreError, ScoringError) as group:
            raise group.exceptions[0] from None  # the disk or the scorer, not this target: the run stops
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
        finally:
            self._gate.pass_ended(target.name)  # a server that never came up: its pass has ended too
        if outcome.failure:
            for task in self.tasks:
                self.progress.abort(f"{target.name}/{task.name}", outcome.failure)
        return outcome

    async def _accuracy_pass(
        self,
        target: TargetConfig,
        backends: list[Backend],
        work: list[tuple[Task, Sample]],
        outcome: TargetOutcome,
        server: ManagedServer | None,
    ) -> None:
        """The target's samples sent, with the top-k logprobs its server really gives, and the
        server's counters and the client's CPU around them."""
        asked = max((self._top_k(task) for task in self.tasks), default=0)
        if asked:
            got, why = await probe_logprobs(backends[0], asked, self.manifest.generation.seed)
            outcome.server["logprobs"] = {"asked": asked, "got": got}
            self._logprobs_cap[target.name] = got
            if why:
                self.notes.append(f"{target.name}: {why}")
                self.progress.note(f"{target.name}: {why}")
        # The server's own counters around the run (vLLM vllm:*, TGI tgi_*), for cross-checks.
        outcome.server["metrics_before"] = await backends[0].scrape_metrics()
        cpu0, wall0 = time.process_time(), time.monotonic()
        if server is None:
            await self._run_samples(target, backends, work, outcome, None)
        else:
            await unless_dead(self._run_samples(target, backends, work, outcome, server), server)
        # The client's share of a core while this target ran (with targets in parallel, the
        # whole process's: an upper bound): is the client ever the limit?
        outcome.server["client"] = {
            "cpu_s": round(time.process_time() - cpu0, 3),
            "wall_s": round(time.monotonic() - wall0, 3),
        }
        outcome.server["metrics_after"] = await backends[0].scrape_metrics()

    def _wants_speed_phase(self, target: TargetConfig) -> bool:
        """A speed phase for this target: enabled, not measured yet, and not a noise-floor row
        (it repeats its reference's server, which has a phase of its own)."""
        return self.manifest.speed_phase.enabled and target.noise_of is None and target.name not in self.speed_done

    async def _run_samples(
        self,
        target: TargetConfig,
        backends: list[Backend],
        work: list[tuple[Task, Sample]],
        outcome: TargetOutcome,
        server: ManagedServer | None,
    ) -> None:
        client = self.manifest.client
        gen = self.manifest.generation
        setup = self.store_key
        # The run fails once errors exceed the threshold of what this run sends; stop there.
        budget = client.error_threshold * len(work)
        sem = asyncio.Semaphore(target.concurrency or client.concurrency)

        outstanding = [0] * len(backends)
        # A target served by several URLs records which one answered each sample.
        urls: list[str | None] = [b.base_url for b in backends] if len(backends) > 1 else [None]

        async def one(task: Task, sample: Sample) -> None:
            # Least outstanding requests first: a slow replica gets less work, not the same share.
            replica = min(range(len(backends)), key=outstanding.__getitem__)
            outstanding[replica] += 1
            self.in_flight += 1
            top_k = min(self._top_k(task), self._logprobs_cap.get(target.name, 0))
            try:
                request = ChatRequest(
                    sample.messages, task.max_tokens, gen.seed, gen.temperature, stream=gen.stream, logprobs=top_k
                )
                self.progress.started(f"{target.name}/{task.name}")
                record = await self._attempt(
                    backends[replica], task, sample, request, target.name, replica_url=urls[replica]
                )
                if record.broken_connection and server is not None and await server.dead_within(1.0):
                    # The managed server crashed under this request: not the sample's failure. It
                    # stays unanswered (sent again on resume) and the watcher stops the target.
                    raise server.death()
                try:
                    self.store.writer(target.name, task.name, setup).write(record)
                except StoreError:
                    self.unwritten = self.in_flight  # this answer, and every one still in flight
                    raise
                self.written += 1
                outcome.sent += 1
                outcome.output_tokens += record.completion_tokens or 0
                failed = record.error is not None
                outcome.errors += failed
                self.progress.advance(f"{target.name}/{task.name}", failed)
                if failed:
                    outcome.last_error = record.error
                if failed and outcome.errors > budget:
                    # The message is written when the target has stopped (see _run_target), so that it
                    # counts every error record on disk, those of requests ending meanwhile too.
                    raise ErrorBudgetExceeded(len(work), client.error_threshold)
            finally:
                outstanding[replica] -= 1
                self.in_flight -= 1
                sem.release()

        async with asyncio.TaskGroup() as tg:
            for task, sample in work:
                await sem.acquire()
                tg.create_task(one(task, sample))

    async def _score(self, task: Task, sample: Sample, reply: str) -> Score:
        """The task's verdict: heavy scorers in the run's scoring process, the others here."""
        scoring = None if self.runtime is None else self.runtime.scoring
        job = task.score_job(sample, reply) if scoring is not None and scoring.alive else None
        if scoring is not None and job is not None:
            fn, args = job
            try:
                return typing.cast(Score, await scoring.run(fn, *args))
            except ScoringProcessDied:
                # Killed from outside (the OOM killer, say): score here from now on, timing precision
                # notwithstanding, rather than lose the answer.
                if "the scoring process died" not in " ".join(self.notes):
                    self.notes.append("the scoring process died; the rest of the run was scored in the main process")
        try:
            return task.score(sample, reply)
        except ImportError as exc:  # a scorer's module not installed: the environment, one line
            raise ScoringError(f"scoring {task.name}: {type(exc).__name__}: {exc}") from None

    def _retry_wait(self, state: RetryCallState) -> float:
        """Exponential backoff with equal jitter, or what the server's Retry-After asks if longer
        (never past the request timeout)."""
        backoff = min(self.retry_wait_max, 0.5 * 2.0 ** (state.attempt_number - 1))
        wait = backoff / 2 + random.uniform(0, backoff / 2)
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            wait = max(wait, min(float(asked), self.manifest.client.request_timeout))
        return wait

    def _top_k(self, task: Task) -> int:
        """The top-k logprobs the manifest asks for on ``task``: its own, else the generation's."""
        own = self.manifest.tasks.get(task.name)
        return own.logprobs if own is not None and own.logprobs is not None else self.manifest.generation.logprobs

    async def _attempt(
        self, backend: Backend, task: Task, sample: Sample, request: ChatRequest, target: str, replica_url: str | None
    ) -> SampleRecord:
        """Send one sample (retrying what is transient) and build its record, answered or failed."""
        attempts = 0
        client = self.manifest.client
        ident: dict[str, Any] = {
            "id": sample.id,
            "task": task.name,
            "subject": sample.subject,
            "prompt_digest": sample.prompt_digest(),
            "gold": sample.gold,
            "target": target,
            "setup": SETUP_VERSIONS[self.manifest.run.setup],
            "replica": replica_url,
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
                if not first.transient or client.retries == 0:
                    raise
                # Only a failed request pays for the retry machinery (the hot path stays lean). The
                # first failure is replayed as tenacity's attempt 1, so backoff starts from it.
                retrying = AsyncRetrying(
                    retry=retry_if_exception(_is_transient),
                    stop=stop_after_attempt(client.retries + 1) | stop_before_delay(client.retry_budget),
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
            return SampleRecord(
                **ident,
                request=backend.build_body(request),
                error=str(exc),
                error_kind="transient" if exc.transient else "fatal",
                error_type=exc.kind,
                status=exc.status,
                attempts=attempts + resends,
                resends=resends,
            )
        score = await self._score(task, sample, completion.text)
        return SampleRecord(
            **ident,
            request=completion.request,
            reply=completion.text,
            raw=completion.raw,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            token_source=completion.token_source,
            token_counts=completion.token_counts,
            logprobs=completion.logprobs,
            timing=completion.stamps.to_timing(),
            server_timing=completion.server_timing,
            extracted=score.extracted,
            resends=resends,
            rule=score.rule,
            correct=score.correct,
            score_details=score.details,
            # Every time the request was sent, the at-once resend after a closed connection included.
            attempts=attempts + resends,
        )
