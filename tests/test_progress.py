"""The progress bar's rate says what the run did: a burst of replies at the end of a slow run
does not read as its rate, and a server's start-up is not counted."""

from __future__ import annotations

from rich.console import Console

from orchestrator.progress import RichProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_finished_bar_shows_the_mean_rate_not_the_last_burst() -> None:
    clock = Clock()
    bars = RichProgress(False, Console(file=None, quiet=True), clock=clock)
    bars.add("t/mmlu", "t · mmlu", total=12, done=2)  # resumed: 10 left
    clock.now += 300  # a managed server starting: not the run's time
    for _ in range(10):
        bars.started("t/mmlu")
    clock.now += 80
    for _ in range(9):  # one every ~0.5 s at the end of a slow batch
        bars.advance("t/mmlu", error=False)
        clock.now += 0.5
    # Live: 9 in the last 10 s, not 9 over the 4 s between the first and last of them.
    assert bars.rate("t/mmlu") == "0.9"
    bars.advance("t/mmlu", error=False)
    # Done: 10 replies over the 84.5 s since the first request.
    assert bars.rate("t/mmlu") == f"{10 / 84.5:.2g}" == "0.12"
