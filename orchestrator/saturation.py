"""Who set the pace, the server or the client: from figures a run already has.

A throughput that stops growing with concurrency is the server's limit only if the client kept
up. The client's side: the share of one core its process used while the target ran (its event
loop is one thread) and the time it took before each request reached the socket. The server's
side: its own time per decoded token against the client's TPOT (llama-server's ``timings``), the
time a request waited in the server before its prompt was processed (TTFT minus the server's
prompt time), and how many of its slots each decode step carried (its ``/metrics``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The client is the limit when its one event-loop thread was this busy, or when it held each
# request this share of its latency before sending it.
CLIENT_BUSY = 0.8
CLIENT_DELAY_SHARE = 0.1
# Below this share of a core, with requests sent at once, the client was waiting: the pace was
# the server's (there is no third party on a loopback or a LAN; the server's own figures then say
# where its time went).
CLIENT_IDLE = 0.5


@dataclass(frozen=True)
class Saturation:
    """The figures of one target (or load level) that say where its time went; None: not known."""

    client_core_share: float | None = None  # client process CPU seconds / wall seconds
    send_delay_ms: float | None = None  # p50: the client's time before the body reached the socket
    e2e_ms: float | None = None  # p50, client-measured
    ttft_ms: float | None = None  # p50, client-measured
    tpot_ms: float | None = None  # p50, client-measured
    server_tpot_ms: float | None = None  # p50 of the server's own generation ms per token
    server_wait_ms: float | None = None  # p50 of TTFT minus the server's prompt time
    busy_slots: float | None = None  # the server's mean slots per decode step
    slots: int | None = None  # slots the server had

    @property
    def limit(self) -> str:
        """``client``, ``server`` or ``unknown``."""
        if self.client_core_share is not None and self.client_core_share >= CLIENT_BUSY:
            return "client"
        if self.send_delay_ms is not None and self.e2e_ms and self.send_delay_ms > CLIENT_DELAY_SHARE * self.e2e_ms:
            return "client"
        if self.client_core_share is None or self.client_core_share >= CLIENT_IDLE:
            return "unknown"
        return "server"

    def line(self) -> str:
        """The finding in words, with the figures behind it."""
        parts = []
        if self.server_tpot_ms is not None and self.tpot_ms:
            parts.append(
                f"the server's own decode time is {self.server_tpot_ms / self.tpot_ms:.0%} of the client's TPOT "
                f"({self.server_tpot_ms:.1f} of {self.tpot_ms:.1f} ms/token)"
            )
        if self.server_wait_ms is not None and self.ttft_ms is not None:
            parts.append(
                f"requests waited {self.server_wait_ms:.0f} ms in the server before their prompt "
                f"(TTFT p50 {self.ttft_ms:.0f} ms)"
            )
        if self.busy_slots is not None:
            of = f" of {self.slots}" if self.slots else ""
            parts.append(f"{self.busy_slots:.1f}{of} slots busy per decode step")
        elif self.slots:
            parts.append(f"the server decodes {self.slots} request{'s' * (self.slots > 1)} at a time")
        if self.client_core_share is not None:
            parts.append(f"the client used {self.client_core_share:.0%} of a core")
        if self.send_delay_ms is not None:
            parts.append(f"took {self.send_delay_ms:.1f} ms before each send")
        head = {
            "server": "the server saturated, not the client",
            "client": "the client was the limit, not the server: its figures understate the server",
            "unknown": "no clear limit",
        }[self.limit]
        return head + (": " + "; ".join(parts) if parts else "")

    def to_json(self) -> dict[str, Any]:
        """The figures, the limit and the line (report.json)."""
        return {**self.__dict__, "limit": self.limit, "line": self.line()}


def llama_busy_slots(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    """llama-server's mean slots per decode step between two scrapes of its ``/metrics``: it
    exposes the mean since its start (``llamacpp:n_busy_slots_per_decode``) and the steps
    (``llamacpp:n_decode_total``), so the window's own mean follows from the two."""
    ratio, steps = "llamacpp:n_busy_slots_per_decode", "llamacpp:n_decode_total"
    if not after or ratio not in after:
        return None
    if not before or ratio not in before or steps not in before or steps not in after:
        return after[ratio]
    decoded = after[steps] - before[steps]
    if decoded <= 0:
        return None
    return (after[ratio] * after[steps] - before[ratio] * before[steps]) / decoded


def server_side(
    managed: dict[str, Any] | None, before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, Any]:
    """The server's slots (as it reported them, else as launched: run.json's ``managed``) and its
    mean busy slots between two ``/metrics`` scrapes: Saturation's server-side fields."""
    managed = managed or {}
    return {
        "busy_slots": llama_busy_slots(before, after),
        "slots": (managed.get("measured") or managed.get("settings") or {}).get("slots"),
    }


def core_share(cpu_s: float | None, wall_s: float | None) -> float | None:
    """CPU seconds over wall seconds: the share of one core."""
    if cpu_s is None or not wall_s:
        return None
    return cpu_s / wall_s


def assess(
    median: Callable[[str], float | None],
    client_core_share: float | None,
    send_delay_ms: float | None,
    managed: dict[str, Any] | None,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
) -> dict[str, Any]:
    """Who set the pace, from one window's latency medians (``median(name)``, names as
    ``metrics.LATENCIES``), the client's share of a core and time before each send, and the
    server's slots and /metrics around the window: the one builder for a bench row and a load
    level alike (report.json's ``saturation``)."""
    return Saturation(
        client_core_share=client_core_share,
        send_delay_ms=send_delay_ms,
        e2e_ms=median("e2el_ms"),
        ttft_ms=median("ttft_ms"),
        tpot_ms=median("tpot_ms"),
        server_tpot_ms=median("server_tpot_ms"),
        server_wait_ms=median("server_wait_ms"),
        **server_side(managed, before, after),
    ).to_json()
