"""run.json as typed objects: ``RunMeta`` (what a run is: its manifest, setup, data, versions,
sessions, each target's ``ServerFacts`` and failures, a Compose run's turns, a load test's profile
and figures), read and written only through the store (``RunStore.read_meta``/``write_meta``).
Keys this version does not declare are kept and written back; a run.json read and written again
is unchanged."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orchestrator.footprint import Footprint
from orchestrator.jsonmodel import Node


@dataclass(kw_only=True)
class ServerFacts(Node):
    """What one target's server was, as the run found it: backend and version, the model it
    served, a managed server's launch, the client's CPU while it ran, /metrics around the run."""

    backend: str | None = None
    version: str | None = None
    served_model: str | None = None
    managed: dict[str, Any] | None = None
    client: dict[str, Any] | None = None
    metrics_before: dict[str, float] | None = None
    metrics_after: dict[str, float] | None = None
    speed_phase: dict[str, Any] | None = None  # the bench's speed phase: its levels, workload, notes
    footprint: Footprint | None = None  # weights, memory and energy (footprint.py)

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "footprint": lambda d: None if d is None else Footprint.from_json(d)
    }


def _servers(data: Mapping[str, Any]) -> dict[str, ServerFacts]:
    return {name: ServerFacts.from_json(facts or {}) for name, facts in data.items()}


@dataclass(kw_only=True)
class RunMeta(Node):
    """One run's run.json."""

    run_id: str | None = None
    created_at: str | None = None
    kind: str | None = None  # "load" for a load test; a bench run says nothing
    manifest: dict[str, Any] = field(default_factory=dict)  # credentials masked
    manifest_path: str | None = None
    data_dir: str | None = None
    setup: dict[str, str] = field(default_factory=dict)  # {"name", "version"}
    record_schema: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_sha: str | None = None
    samples: dict[str, int] = field(default_factory=dict)  # task -> samples the run sends
    sessions: list[dict[str, Any]] = field(default_factory=list)
    servers: dict[str, ServerFacts] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # target -> why it stopped early
    compose: dict[str, Any] = field(default_factory=dict)  # a Compose run's plan and events
    # A load test's
    load_profile: dict[str, Any] | None = None
    client: dict[str, Any] = field(default_factory=dict)
    load_notes: dict[str, list[str]] = field(default_factory=dict)
    server_metrics: dict[str, Any] = field(default_factory=dict)
    roofline: dict[str, Any] = field(default_factory=dict)
    # A bench run's (--gpu/--bandwidth-gbs): bandwidth, GPUs per server, each target's weight bytes
    roofline_weights: dict[str, Any] | None = None

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"servers": _servers}

    def server(self, target: str) -> ServerFacts:
        """A target's server facts (empty when the run has none)."""
        return self.servers.get(target) or ServerFacts()
