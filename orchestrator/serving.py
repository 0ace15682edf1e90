"""What both drivers share: serving a target (launch a managed server or wait for a running one,
open its adapters, watch it, always clean up), the progress protocol, the open-file budget and the
store's fsync ticker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from orchestrator.backends import Backend, BackendError, ChatRequest, open_backends
from orchestrator.backends.logprobs import returned_k
from orchestrator.llamacpp import LaunchError, ManagedServer, managed_server, resolve_model
from orchestrator.manifest import Manifest, TargetConfig
from orchestrator.secrets import split_credentials
from orchestrator.store import RunStore
from orchestrator.timing import LoopPacer

T = TypeVar("T")


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

    def note(self, text: str) -> None:
        """A line that stays: what the run had to adapt to, said when it happens."""


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

    def note(self, text: str) -> None:
        """Ignore."""


# Slots of a managed llama-server when the run does not bound its requests in flight (a rate mode
# without max_concurrency).
DEFAULT_SLOTS = 16


async def launch_server(
    target: TargetConfig, manifest: Manifest, store: RunStore, progress: Progress, model_path: Path | None = None
) -> ManagedServer:
    """Start a managed llama.cpp server for a target and wait until it serves (``model_path``:
    already resolved before the run, else located or downloaded now). A server that batches gets
    as many slots as the driver keeps requests in flight for the target."""
    assert target.launch is not None
    if model_path is None:
        progress.status(f"{target.name}: locating model")
        model_path = await asyncio.to_thread(resolve_model, target.launch, manifest.resolve_path)
    slots = target.concurrency or manifest.client.concurrency or DEFAULT_SLOTS
    server = managed_server(
        target.name, target.launch, model_path, store.server_log(target.name), slots, manifest.resolve_path
    )

    def waiting(elapsed: float) -> None:
        progress.status(f"{target.name}: waiting for {server.kind} on {server.url} ({elapsed:.0f} s)")

    try:
        await server.start()
        last = await poll_ready(
            server.url, target.launch.startup_timeout, waiting, ("/v1/models",), 0.25, server.exited
        )
        if server.exited():
            raise server.death("exited at start")
        if last is not None:
            raise LaunchError(
                f"llama.cpp server for {target.name} not ready after {target.launch.startup_timeout:.0f} s "
                f"({last}; log: {server.log_path})"
            )
    except BaseException:
        await server.stop()
        raise
    progress.status(f"{target.name}: {server.kind} up on {server.url}")
    return server


async def wait_healthy(target: TargetConfig, url: str, limit_s: float, progress: Progress) -> None:
    """Poll /health (or /v1/models for servers without it) until it answers 200, or time out."""

    def waiting(elapsed: float) -> None:
        progress.status(f"waiting for {target.name} at {split_credentials(url)[0]} to be healthy ({elapsed:.0f} s)")

    last = await poll_ready(url, limit_s, waiting)
    if last is not None:
        raise LaunchError(f"service {target.name} at {url} not healthy after {limit_s:.0f} s ({last})")


async def poll_ready(
    url: str,
    limit_s: float,
    on_wait: Callable[[float], None],
    paths: tuple[str, ...] = ("/health", "/v1/models"),
    interval: float = 1.0,
    gone: Callable[[], bool] | None = None,
) -> str | None:
    """The one readiness poller: GET each path in turn (a 404 tries the next) until one answers
    200; None when it did, else what was last seen once ``limit_s`` passed (or ``gone()``, a
    process that ended, made waiting pointless)."""
    started = time.monotonic()
    last = "no answer yet"
    url, credentials = split_credentials(url)
    auth = aiohttp.BasicAuth(*credentials) if credentials else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if gone is not None and gone():
                return "the server exited"
            for path in paths:
                try:
                    async with session.get(f"{url}{path}", auth=auth) as resp:
                        if resp.status == 200:
                            return None
                        last = f"{path} answered HTTP {resp.status}"
                        if resp.status != 404:
                            break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    break
            elapsed = time.monotonic() - started
            if elapsed > limit_s:
                return last
            on_wait(elapsed)
            await asyncio.sleep(interval)


@dataclass
class Serving:
    """A target ready to take requests: its adapters (one per replica) and, if managed, its server."""

    backends: list[Backend]
    urls: list[str]
    server: ManagedServer | None
    # A managed server's launch as run.json keeps it (command, build, settings chosen and measured),
    # and the line saying where the server runs other settings than chosen.
    managed: dict[str, Any] | None = None
    note: str | None = None


@contextlib.asynccontextmanager
async def serving(
    target: TargetConfig,
    manifest: Manifest,
    store: RunStore,
    progress: Progress,
    tokenizer_path: Callable[[TargetConfig], Path | None],
    model_path: Path | None = None,
    pacer: LoopPacer | None = None,
) -> AsyncIterator[Serving]:
    """Start (managed) or wait for (health_timeout) a target's servers, open its adapters (on the
    driver's ``pacer``); always clean up."""
    server: ManagedServer | None = None
    backends: list[Backend] = []
    try:
        urls = list(target.urls) or ([target.url] if target.url else [])
        if target.launch is not None:
            server = await launch_server(target, manifest, store, progress, model_path)
            urls = [server.url]
        elif manifest.client.health_timeout > 0:
            await asyncio.gather(*(wait_healthy(target, u, manifest.client.health_timeout, progress) for u in urls))
        backends = await open_backends(target, urls, manifest.client, tokenizer_path(target), pacer)
        live = Serving(backends, urls, server)
        if server is not None:
            live.managed, live.note = server.record(await backends[0].describe())
            if live.note:
                progress.note(f"{target.name}: {live.note}")
        yield live
    finally:
        if backends:
            await backends[0].close()  # the replicas share this one session
        if server is not None:
            progress.status(f"stopping {server.kind} of {target.name}")
            await server.stop()


async def probe_logprobs(backend: Backend, asked: int, seed: int) -> tuple[int, str | None]:
    """The top-k log-probabilities this server really gives when ``asked`` for: one short request,
    then smaller k where it refuses (a server's cap, e.g. TGI's --max-top-n-tokens). A few tokens,
    not one: llama-cpp-python merges alternatives whose text is the same, so one position may show
    fewer than it gave. Returns the k to ask for (0: none) and, when that is not ``asked``, the
    line that says why."""
    # The caller names the target; no URL in the line (one may carry a token in its query).
    name = f"its {backend.name} server"
    refused = ""
    for k in [asked, *(c for c in (10, 5, 1) if c < asked)]:
        try:
            reply = await backend.generate(ChatRequest((("user", "Hi"),), max_tokens=8, seed=seed, logprobs=k))
        except BackendError as exc:
            if exc.transient:
                raise
            refused = str(exc)
            continue
        if not reply.logprobs:
            return 0, f"{name} returns no logprobs (asked for top-{asked}): divergence is not measured for it"
        got = min(k, returned_k(reply.logprobs))
        if got < asked:
            return got, f"{name} gives top-{got} logprobs, not the top-{asked} asked for: its divergence is top-{got}"
        return got, None
    return 0, f"{name} refuses logprobs (asked for top-{asked}: {refused[:200]}): divergence is not measured for it"


async def unless_dead(work: Coroutine[Any, Any, T], server: ManagedServer) -> T:
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
        return await job  # finished (or failed) on its own
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
