"""Live progress in the terminal: a bar per target x task (in flight, rate, errors) and one
status line. Imported only by the commands that run something."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

RATE_WINDOW = 10.0  # seconds: the live rate's window


def _rate(count: int, seconds: float) -> str:
    """Requests per second, to two significant figures below 10 (0.12, not 0.1)."""
    if seconds <= 0 or count == 0:
        return "-"
    value = count / seconds
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}" if value >= 0.01 else f"{value:.1e}"


class _BarsOnly(ProgressColumn):
    """A column shown on the bars of samples, left blank on the status line."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> RenderableType:
        """The wrapped column's rendering, or nothing for the status line."""
        return "" if task.fields.get("status_line") else self.column.render(task)


class RichProgress:
    """Progress bars per target x task, plus one status line (text only, no bar)."""

    def __init__(self, enabled: bool, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start: dict[str, float | None] = {}  # the bar's first request
        self._ended: dict[str, int] = {}  # samples ended this session
        self._left: dict[str, int] = {}  # samples the bar had to do when it was added
        self.bars = Progress(
            TextColumn("{task.description}"),
            *(
                _BarsOnly(c)
                for c in (
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("[cyan]{task.fields[inflight]} in flight"),
                    TextColumn("{task.fields[rate]} req/s"),
                    TextColumn("[red]{task.fields[errors]} err"),
                    TimeElapsedColumn(),
                )
            ),
            console=console,
            disable=not enabled,
        )
        self._ids: dict[str, TaskID] = {}
        self._errors: dict[str, int] = {}
        self._inflight: dict[str, int] = {}
        self._ends: dict[str, collections.deque[float]] = {}
        self._status = self.bars.add_task(
            "", total=None, errors="", inflight="", rate="", visible=enabled, status_line=True
        )

    def add(self, key: str, description: str, total: int, done: int) -> None:
        """New bar."""
        self._errors[key] = 0
        self._inflight[key] = 0
        self._ends[key] = collections.deque()
        self._start[key] = None
        self._ended[key] = 0
        self._left[key] = total - done
        self._ids[key] = self.bars.add_task(description, total=total, completed=done, errors=0, inflight=0, rate="-")

    def started(self, key: str) -> None:
        """A request left the client."""
        if self._start[key] is None:
            self._start[key] = (
                self._clock()
            )  # the rate's clock starts with the first request, not the server's start-up
        self._inflight[key] += 1
        self.bars.update(self._ids[key], inflight=self._inflight[key])

    def advance(self, key: str, error: bool) -> None:
        """One sample ended. The rate shown: the samples ended in the last 10 seconds over those
        10 seconds (or the time since the bar started, if shorter), and once the bar is done, the
        whole bar's mean: a burst of replies at the end never reads as the run's rate."""
        now = self._clock()
        ends = self._ends[key]
        ends.append(now)
        while ends and now - ends[0] > RATE_WINDOW:
            ends.popleft()
        self._ended[key] += 1
        elapsed = now - (self._start[key] or now)
        if self._ended[key] >= self._left[key]:
            rate = _rate(self._ended[key], elapsed)
        else:
            rate = _rate(len(ends), min(RATE_WINDOW, elapsed))
        self._errors[key] += error
        self._inflight[key] = max(0, self._inflight[key] - 1)
        self.bars.update(self._ids[key], advance=1, errors=self._errors[key], inflight=self._inflight[key], rate=rate)

    def rate(self, key: str) -> str:
        """The rate a bar shows now."""
        return str(self.bars.tasks[self._index(self._ids[key])].fields["rate"])

    def status(self, text: str) -> None:
        """Status line (server start-up and the like)."""
        self.bars.update(self._status, description=f"[dim]{escape(text)}")

    def note(self, text: str) -> None:
        """A line printed above the bars, where it stays."""
        self.bars.console.print(f"note: {escape(text)}", soft_wrap=True, highlight=False)

    def abort(self, key: str, reason: str) -> None:
        """A bar whose target stopped early: it says so, and stops its clock."""
        if key in self._ids:
            task_id = self._ids[key]
            description = self.bars.tasks[self._index(task_id)].description
            self.bars.update(task_id, description=f"{description} [red]aborted[/]: {escape(reason[:80])}")
            self.bars.stop_task(task_id)

    def _index(self, task_id: TaskID) -> int:
        return next(i for i, t in enumerate(self.bars.tasks) if t.id == task_id)
