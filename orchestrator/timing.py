"""Raw perf_counter stamps taken per request, the loop pacer, and percentiles/busy time.

Only raw stamps are stored (send, first content token, each content chunk, end), as a
``records.Timing`` of offsets from the moment the request reached the socket (see
``Stamps.to_timing``); every latency is derived from those, in ``records``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.records import Timing


@dataclass
class Stamps:
    """perf_counter stamps of one request, taken by the backend adapter."""

    wall_send: float = 0.0  # time.time() at send: places the request on a clock shared across processes
    t_send: float = 0.0
    t_first: float | None = None  # first non-empty content token
    chunks: list[float] = field(default_factory=list)  # perf_counter of each content chunk
    t_end: float = 0.0
    t_wire: float | None = None  # the request body handed to the socket (aiohttp trace)
    resends: int = 0  # sent again at once on a new connection (the server had closed the kept-alive one)
    reused: bool = False  # the request went out on a kept-alive connection (aiohttp trace)

    def mark_send(self) -> None:
        """Stamp the moment the request leaves the client."""
        self.wall_send = time.time()
        self.t_send = time.perf_counter()

    def add_chunk(self, stamp: float) -> None:
        """Record a content chunk that arrived at ``stamp`` (perf_counter of its network read)."""
        if self.t_first is None:
            self.t_first = stamp
        self.chunks.append(stamp)

    def mark_end(self) -> None:
        """Stamp the end of the reply (last byte read)."""
        self.t_end = time.perf_counter()

    def to_timing(self) -> Timing:
        """Offsets relative to the moment the request reached the socket, in seconds (microseconds).

        Latencies start when the request body was handed to the socket (aiohttp's trace hook), not
        when the client decided to send: the time in between is the client's own delay (building
        the request, a busy event loop) and is kept apart as ``send_delay``, so a loaded client
        does not inflate the server's TTFT/E2E.
        """
        base = self.t_wire if self.t_wire is not None else self.t_send
        return Timing(
            wall_send=round(self.wall_send + (base - self.t_send), 6),
            send_delay=round(base - self.t_send, 6),
            ttft=None if self.t_first is None else round(self.t_first - base, 6),
            chunks=tuple(round(c - base, 6) for c in self.chunks),
            e2e=round(self.t_end - base, 6),
        )


class LoopPacer:
    """Lets one heavy step run per pass of the event loop, so the loop reads its sockets between.

    Ending a request (decoding its stream, building and writing its record) and starting one
    (building and sending it) cost a few hundred microseconds each. When many streams end at
    once (a server's batch finishing together), running all of that back to back keeps the loop
    from reading any socket for tens of milliseconds, and every arrival it stamps meanwhile is
    stamped late. So such a step first waits for its turn: one per loop pass, each pass
    starting with a poll of the sockets. A turn costs one pass (microseconds on an idle loop).
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def turn(self) -> None:
        """Wait until this task may run one heavy step."""
        async with self._lock:
            await asyncio.sleep(0)  # one loop pass: the sockets are polled before the step runs


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    return percentile_of_sorted(sorted(values), q)


def percentile_of_sorted(ordered: Sequence[float], q: float) -> float | None:
    """``percentile`` of values already sorted (several percentiles of one sort)."""
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] wall-clock intervals.

    Throughput divides by this instead of first-send-to-last-end so that a run resumed a day later
    does not count the gap in between as time the server was working.
    """
    total = 0.0
    cur_start: float | None = None
    cur_end = 0.0
    for start, end in sorted(intervals):
        if cur_start is None or start > cur_end:
            if cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_start is not None:
        total += cur_end - cur_start
    return total
