"""Heavy scoring (IFEval's checkers) in a child process of its own, spoken to over pipes.

In the event loop's process, milliseconds of pure-Python scoring per reply would take the GIL
from the loop that stamps streams (measured at c=64: p99 TTFT/ITL/E2E error 3.8/4.7/5.3 ms with a
thread, 1.0/2.5/2.1 ms with a process; benchmarks/timing_accuracy.py). A plain subprocess rather
than multiprocessing: no semaphores for a resource tracker to report as leaked after a kill -9,
its own session so that a terminal's Ctrl-C is the orchestrator's to handle (no traceback from
the child), and the parent-death signal so that it never outlives the orchestrator.

Frames on both pipes: 8 bytes little-endian length, then a pickle — requests ``(id, job)`` with
``job`` itself a pickle of ``(fn, args)`` (``fn`` a module-level function: unpickling it imports
its module, which may fail, and the failure must still be answered to the job that caused it),
answers ``(id, ok, value_or_error_text)``. The child's stderr and its log lines go to the run's
log (``logs.py``), never to the terminal.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator import supervisor
from orchestrator.errors import ScoringError
from orchestrator.logs import route_logs

LOG_ENV = "ORCHESTRATOR_LOG"  # the run's log, for the child


class ScoringProcessDied(RuntimeError):
    """The scoring process exited with requests outstanding."""


class ScoringProcess:
    """One scoring child; :meth:`run` awaits a function's result computed there."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0

    async def start(self, log: Path | None = None) -> None:
        """Start the child through the supervisor (it imports what the first job needs when that
        job arrives); ``log``: the run's log, where its stderr and log lines go."""
        env = {**os.environ, LOG_ENV: str(log)} if log is not None else None
        try:
            self._proc = await supervisor.spawn(
                [sys.executable, "-m", "orchestrator.scoring"], log, pipes=True, env=env
            )
        except OSError as exc:
            raise ScoringError(f"cannot start the scoring process ({sys.executable}): {exc.strerror or exc}") from None
        self._reader = asyncio.create_task(self._read())

    @property
    def alive(self) -> bool:
        """Whether the child is still there to take jobs."""
        return self._proc is not None and self._proc.returncode is None and not (self._reader and self._reader.done())

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Send one job; the future resolves with its result (or the child's error)."""
        assert self._proc is not None and self._proc.stdin is not None, "start() first"
        job_id = self._next
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = future
        job = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        data = pickle.dumps((job_id, job), protocol=pickle.HIGHEST_PROTOCOL)
        self._proc.stdin.write(len(data).to_bytes(8, "little") + data)
        return future

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` computed in the child."""
        return await self.submit(fn, *args)

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        try:
            while True:
                size = int.from_bytes(await out.readexactly(8), "little")
                job_id, ok, value = pickle.loads(await out.readexactly(size))
                future = self._pending.pop(job_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(ScoringError(f"scoring failed in the scoring process: {value}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ScoringProcessDied("the scoring process exited"))
        self._pending.clear()

    async def close(self) -> None:
        """End the child: close its input (it exits), kill it if it does not within 5 s."""
        if self._proc is None:
            return
        await supervisor.stop(self._proc, 5, close_stdin=True)  # end of input: the child exits
        if self._reader is not None:
            await self._reader
        for future in self._pending.values():
            future.cancel()


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The child's loop: read a job, compute it, answer; end at end of input."""
    while True:
        header = requests.read(8)
        if len(header) < 8:
            return
        job_id, job = pickle.loads(requests.read(int.from_bytes(header, "little")))
        try:
            fn, args = pickle.loads(job)  # imports fn's module: a missing one is this job's failure
            answer = (job_id, True, fn(*args))
        except Exception as exc:  # the parent gets one line, the log the traceback; the child goes on
            traceback.print_exc(file=sys.stderr)
            answer = (job_id, False, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(len(data).to_bytes(8, "little") + data)
        answers.flush()


def main() -> None:
    """Entry point of the child: frames on the original stdout, anything printed goes to stderr."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a checker's stray print must not corrupt a frame
    log = os.environ.get(LOG_ENV)
    route_logs(Path(log) if log else None)  # a library's logging.error() goes to the run's log
    _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
