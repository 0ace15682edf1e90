"""One metric pipeline for accuracy runs and load tests alike: each latency metric is one entry of
``LATENCIES`` (its name and how to read it off one record, in milliseconds), summarised as one
``Distribution`` type (mean and the percentiles asked for).

A record's latencies are properties of its raw stamps (``records.Timing``/``Exchange``), so a
metric added here applies to every stored run. Adding one: a property on the record (when it is
new) and an entry below; ``speed_summary`` (a bench row's speed) and ``loadtest.level_metrics``
(a load level) both pick it up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.records import Exchange, LoadRecord
from orchestrator.timing import percentile_of_sorted

MS = 1000.0


@dataclass(frozen=True)
class Distribution:
    """Values summarised: their count, mean and percentiles (linear interpolation, numpy's
    default), all None when there is no value."""

    count: int
    mean: float | None
    percentiles: Mapping[float, float | None]

    @classmethod
    def of(cls, values: Sequence[float], percentiles: Iterable[float]) -> Distribution:
        """The distribution of ``values`` at each percentile (q in [0, 100])."""
        ordered = sorted(values)
        return cls(
            len(ordered),
            sum(values) / len(values) if values else None,  # in their order: the same float sum as ever
            {float(q): percentile_of_sorted(ordered, q) for q in percentiles},
        )

    def p(self, q: float) -> float | None:
        """The q-th percentile (it must have been asked for)."""
        return self.percentiles[float(q)]

    def to_json(self) -> dict[str, float | None]:
        """``{"mean": …, "p50": …, …}``: load_report.json's form."""
        return {"mean": self.mean, **{f"p{q:g}": v for q, v in self.percentiles.items()}}


def _one(value: float | None, scale: float = MS) -> list[float]:
    return [] if value is None else [value * scale]


def _server_wait(r: Exchange) -> list[float]:
    return [] if r.server_timing is None else _one(r.server_timing.wait_ms(r.ttft), 1.0)


def _queued(r: Exchange) -> list[float]:
    return [r.queued * MS] if isinstance(r, LoadRecord) else []


def _post(r: Exchange) -> list[float]:
    return _one(r.post) if isinstance(r, LoadRecord) else []


@dataclass(frozen=True)
class Latency:
    """A latency metric: its name (milliseconds), a title, its values from one answered record
    (none, one, or several: ITL pools every gap), whether it counts failed requests too, and
    where it is shown: a load level's figures and table, or only where the server gave it."""

    name: str
    title: str
    values: Callable[[Exchange], list[float]]
    every_request: bool = False  # measured on every request, failed ones included (client time)
    load: bool = True  # a load level's figure (load_report.json, the latency table)
    server: bool = False  # the server's own account: shown where the server gives one


LATENCIES: dict[str, Latency] = {
    m.name: m
    for m in (
        Latency("ttft_ms", "TTFT", lambda r: _one(r.ttft)),
        Latency("tpot_ms", "TPOT", lambda r: _one(r.tpot)),
        Latency("itl_ms", "ITL", lambda r: [g * MS for g in r.itl]),
        Latency("e2el_ms", "E2EL", lambda r: _one(r.e2e)),
        Latency("queue_ms", "queue", _queued, every_request=True),
        Latency("post_ms", "post", _post),
        Latency("send_delay_ms", "send delay", lambda r: _one(r.timing.send_delay if r.timing else None), load=False),
        # The server's own account, where it gives one (llama-server's timings): its time per
        # decoded token, and the wait before its prompt (TTFT minus its prompt time).
        Latency(
            "server_tpot_ms",
            "server TPOT",
            lambda r: _one(r.server_timing and r.server_timing.per_token_ms, 1.0),
            server=True,
        ),
        Latency("server_wait_ms", "server wait", _server_wait, server=True),
    )
}


def latencies(
    answered: Sequence[Exchange], every: Sequence[Exchange], names: Iterable[str], percentiles: Iterable[float]
) -> dict[str, Distribution]:
    """Each named latency's distribution: over the answered records, or over ``every`` request for
    a metric that measures the client on failures too."""
    qs = tuple(percentiles)
    out = {}
    for name in names:
        metric = LATENCIES[name]
        pool = every if metric.every_request else answered
        out[name] = Distribution.of([v for r in pool for v in metric.values(r)], qs)
    return out
