"""One run's machinery, created and owned here: the event loop, the pacer, the scoring process,
the fsync ticker. A driver (``runner.Runner``, ``loadrun.LoadRunner``) opens a :class:`Runtime`
for the length of its run and hands its parts down explicitly; nothing reaches them through a
global.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.logs import LOG_NAME
from orchestrator.scoring import ScoringProcess
from orchestrator.store import SYNC_INTERVAL, RunStore
from orchestrator.timing import LoopPacer

T = TypeVar("T")

# A scoring job: a module-level function and its arguments (pickled to the scoring process).
Job = tuple[Callable[..., Any], tuple[Any, ...]]


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a driver on uvloop when installed: measured 21 % more requests/s and 17 % less CPU per
    request than asyncio's loop (benchmarks/client_overhead.py, c=256). Ctrl-C behaves as asyncio.run.

    What is alive before the loop starts (modules, datasets, tokenizers) is moved out of the
    garbage collector's reach (gc.freeze): full collections then walk only what the run creates,
    and their pauses, which stall every stream being timed, shrink (benchmarks/timing_accuracy.py,
    c=64: p99 ITL error 3.6 -> 1.5 ms)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    gc.collect()
    gc.freeze()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class Runtime:
    """What every request of one run shares.

    ``pacer``: every adapter of every target takes its heavy steps in its turns (see
    ``timing.LoopPacer``). ``scoring``: the child process heavy scorers run in, when the run has
    such a task (None otherwise, or the process is gone: then scoring happens in this process).
    """

    store: RunStore
    pacer: LoopPacer
    scoring: ScoringProcess | None


@contextlib.asynccontextmanager
async def open_runtime(store: RunStore, warm_up: Job | None = None) -> AsyncIterator[Runtime]:
    """The run's runtime on the running loop; everything it started is stopped on exit.

    ``warm_up``: a first scoring job, when the run has heavy scoring. The scoring process is
    started for it and it runs (imports, checkers, NLTK's model) while the first requests go out.
    The store's records are fsynced every half SYNC_INTERVAL from a thread, and once at the end.
    """
    scoring: ScoringProcess | None = None
    if warm_up is not None:
        scoring = ScoringProcess()
        await scoring.start(store.root / LOG_NAME)
        fn, args = warm_up
        warm = scoring.submit(fn, *args)
        warm.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure shows on real jobs
    try:
        async with synced(store):
            yield Runtime(store, LoopPacer(), scoring)
    finally:
        if scoring is not None:
            await scoring.close()


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


__all__ = ["Job", "Runtime", "open_runtime", "run_async", "synced"]
