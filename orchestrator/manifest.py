"""Run manifest: YAML in, validated and frozen configuration out.

Validation is driven by the dataclass type hints below, so the schema lives in one place.
Every error names the file, the key path (``targets[2].url``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from orchestrator.errors import LoadConfigError
from orchestrator.registry import LOAD_PROMPTS, REFERENCE_QUANTS, TASKS, BackendKind, LlamaServerKind, LoadPrompts
from orchestrator.schema import ManifestError as ManifestError  # re-exported: the manifest's error
from orchestrator.schema import build, expand_env, plain
from orchestrator.schema import read_manifest_data as read_manifest_data
from orchestrator.setups import SETUPS

KNOWN_TASKS = tuple(TASKS)
KNOWN_SETUPS = tuple(SETUPS)
# The most top-k log-probabilities asked for: OpenAI's limit and vLLM's default (--max-logprobs).
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TaskConfig:
    """Options of one task; ``None`` means the task's own default."""

    limit: int | None = None
    subjects: tuple[str, ...] | None = None
    shots: int | None = None
    max_tokens: int | None = None
    logprobs: int | None = None  # this task's top-k log-probabilities; None: the generation's


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy decoding settings sent identically to every backend."""

    temperature: float = 0.0
    seed: int = 1234
    max_tokens: int | None = None  # default for tasks without their own; else the task's default
    stream: bool = True
    # > 0: ask every backend for the top-k log-probabilities of each generated token, stored per
    # sample, for the divergence of each quantization from its reference (0: not asked).
    logprobs: int = 0


@dataclass(frozen=True)
class ClientConfig:
    """How the client of an accuracy run pushes each target: requests in flight, timeouts,
    retries, the error budget. (A load test's pressure is its own type, ``LoadProfile``.)"""

    concurrency: int = 16
    request_timeout: float = 300.0
    # Transient failures (connection, timeout, 429/502/503/504, cut-off replies) are retried up to
    # `retries` times with exponential backoff (0.5 s doubling, at most 8 s, equal jitter), or as
    # long as the server's Retry-After asks (at most request_timeout), while the waits of one
    # sample stay within `retry_budget` seconds: enough to outlast a server restart.
    retries: int = 8
    retry_budget: float = 60.0
    targets_in_parallel: bool = False
    error_threshold: float = 0.05
    health_timeout: float = 0.0  # > 0: wait this long for each server's /health before sending


MODES = ("concurrency", "constant", "poisson")


@dataclass(frozen=True)
class LoadProfile:
    """One load test (`orchestrate load`; the manifest's ``load_test`` section with the CLI's
    overrides on top): a mode and its levels, bounded by request count and/or duration."""

    mode: Literal["concurrency", "constant", "poisson"] = "concurrency"
    levels: tuple[float, ...] = (1, 4, 16)  # concurrencies, or rates in requests/s
    auto: bool = False  # find the saturation throughput, then sweep rates up to it
    requests: int = 100  # per level (after warm-up)
    duration: float | None = None  # seconds per level; whichever bound comes first
    warmup: int = 4  # requests per level excluded from the statistics
    input_tokens: int = 128
    output_tokens: int = 64
    ignore_eos: bool = True
    max_concurrency: int | None = None  # cap of in-flight requests for rate modes (client queue)
    percentiles: tuple[float, ...] = (50, 90, 99)
    slo: dict[str, float] = field(default_factory=dict)  # metric -> threshold in ms
    seed: int = 0
    prompts: LoadPrompts = "synthetic"  # or a benchmark's own prompts: mmlu, ceval, ifeval

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadProfile:
        """From run.json's plain form (lists back to tuples)."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for run.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LoadConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.auto and (not self.levels or min(self.levels) <= 0):
            raise LoadConfigError("levels must be positive numbers (concurrencies or requests/s)")
        if self.mode == "concurrency" and any(int(x) != x for x in self.levels):
            raise LoadConfigError("concurrency levels must be whole numbers")
        if self.requests < 1 or self.warmup < 0 or self.input_tokens < 1 or self.output_tokens < 1:
            raise LoadConfigError("requests, input and output tokens must be positive; warmup 0 or more")
        if self.duration is not None and self.duration <= 0:
            raise LoadConfigError(f"duration must be a positive number of seconds, got {self.duration:g}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise LoadConfigError(f"max_concurrency must be a positive integer, got {self.max_concurrency}")
        if any(p <= 0 or p >= 100 for p in self.percentiles):
            raise LoadConfigError("percentiles must lie between 0 and 100 (exclusive)")
        if self.prompts not in LOAD_PROMPTS:
            raise LoadConfigError(f"prompts must be one of {', '.join(LOAD_PROMPTS)}, got {self.prompts!r}")
        unknown = set(self.slo) - {"ttft", "tpot", "itl", "e2el"}
        if unknown:
            raise LoadConfigError(f"unknown SLO metric(s): {', '.join(sorted(unknown))} (ttft, tpot, itl, e2el)")


@dataclass(frozen=True)
class SpeedPhaseConfig:
    """``orchestrate bench``'s controlled speed phase: after a target's accuracy pass, with its
    server still up, the same workload for every row (synthetic prompts of ``input_tokens`` from
    the model's tokenizer, ``output_tokens`` replies with end-of-sequence ignored where the backend
    honours it, greedy, no logprobs), at the run's concurrency and at batch 1, each level bounded
    by its requests and by ``duration`` seconds. The main table's speed columns come from it."""

    enabled: bool = True
    requests: int = 64  # measured requests at the run's concurrency (after warm-up)
    batch1_requests: int = 8  # measured requests at batch 1
    warmup: int = 2  # per level, excluded from the figures
    duration: float = 20.0  # seconds of sending per level at most
    input_tokens: int = 256
    output_tokens: int = 128
    seed: int = 0


@dataclass(frozen=True)
class LaunchConfig:
    """A llama.cpp server the orchestrator starts itself (managed target)."""

    model_path: str | None = None
    repo: str | None = None
    filename: str | None = None
    port: int = 0
    n_ctx: int = 4096  # the context one request can use (llama-server: per slot)
    startup_timeout: float = 600.0
    extra_args: tuple[str, ...] = ()
    # Which server: llama-server (found at `binary`, on PATH or beside the orchestrator's Python),
    # llama-cpp-python's (in `python`), or auto: llama-cpp-python's when `python` is given, else
    # llama-server where one is found, else llama-cpp-python's.
    server: LlamaServerKind = "auto"
    binary: str | None = None
    python: str | None = None
    # llama-server's slots (requests decoded together); default: the target's concurrency.
    parallel: int | None = None


@dataclass(frozen=True)
class TargetConfig:
    """One checkpoint served by one backend."""

    name: str
    model: str
    quantization: str
    backend: BackendKind
    url: str | None = None
    urls: tuple[str, ...] = ()  # replicas of the same checkpoint: requests go to the least busy
    model_id: str | None = None
    served_model: str | None = None
    tokenizer: str | None = None
    api_key_env: str | None = None
    launch: LaunchConfig | None = None
    # Requests in flight for this target alone (default: client.concurrency).
    concurrency: int | None = None
    # Set by the orchestrator for the noise floor: this target sends that reference target's
    # samples again, to measure what serving alone changes.
    noise_of: str | None = None
    # Where the weights come from when they are not the named checkpoint's own (e.g. "F16
    # dequantized from Q4_1"): published figures are shown beside the row, never compared with it.
    weights: str | None = None
    # The GPUs of this host that serve it (indices or UUIDs), for a server the orchestrator did not
    # start: its energy and device memory are read on them (a Compose service's device_ids).
    gpus: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """Run-wide settings."""

    name: str
    setup: str = "qwen"
    output_dir: str = "runs"
    data_dir: str | None = None
    # Send each model's reference target's samples twice more (at the run's concurrency and at 1):
    # reference-vs-itself flips and Δ, the noise floor the quantization deltas are read against.
    noise_floor: bool = False


@dataclass(frozen=True)
class Manifest:
    """A whole run manifest, validated."""

    run: RunConfig
    targets: tuple[TargetConfig, ...]
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    load_test: LoadProfile = field(default_factory=lambda: LoadProfile())
    speed_phase: SpeedPhaseConfig = field(default_factory=SpeedPhaseConfig)
    source: str = ""

    def resolve_path(self, value: str) -> Path:
        """Resolve a path from the manifest relative to the manifest's folder."""
        p = Path(os.path.expandvars(os.path.expanduser(value)))
        if p.is_absolute() or not self.source:
            return p
        return Path(self.source).resolve().parent / p

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (as loaded), suitable for run.json and for resuming."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return typing.cast(dict[str, Any], plain(out))


def _check_url(url: str, path: str, source: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ManifestError(source, path, f"expected an http(s) URL like http://127.0.0.1:8000, got {url!r}")
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ManifestError(source, path, f"expected a valid port in the URL, got {url!r}") from None


def _check_semantics(m: Manifest, source: str) -> None:
    """Rules the type hints cannot express."""
    if not m.targets:
        raise ManifestError(source, "targets", "expected at least one target")
    if m.run.setup not in KNOWN_SETUPS:
        raise ManifestError(source, "run.setup", f"expected one of {', '.join(KNOWN_SETUPS)}, got {m.run.setup!r}")
    if not m.tasks:
        raise ManifestError(source, "tasks", f"expected at least one task of: {', '.join(KNOWN_TASKS)}")
    for name, task in m.tasks.items():
        if name not in KNOWN_TASKS:
            raise ManifestError(source, f"tasks.{name}", f"unknown task (expected one of: {', '.join(KNOWN_TASKS)})")
        for key in ("limit", "shots", "max_tokens", "logprobs"):
            value = getattr(task, key)
            if value is not None and value < (0 if key in ("shots", "logprobs") else 1):
                raise ManifestError(source, f"tasks.{name}.{key}", f"expected a positive integer, got {value}")
        if task.logprobs is not None and task.logprobs > MAX_LOGPROBS:
            raise ManifestError(source, f"tasks.{name}.logprobs", f"expected at most {MAX_LOGPROBS}")
    if m.generation.temperature != 0.0:
        raise ManifestError(source, "generation.temperature", "expected 0 (runs are greedy on every backend)")
    if m.generation.max_tokens is not None and m.generation.max_tokens < 1:
        raise ManifestError(source, "generation.max_tokens", "expected a positive integer")
    if not 0 <= m.generation.logprobs <= MAX_LOGPROBS:
        raise ManifestError(source, "generation.logprobs", f"expected 0 (off) to {MAX_LOGPROBS}")
    if m.client.concurrency < 1:
        raise ManifestError(source, "client.concurrency", "expected a positive integer")
    for i, t in enumerate(m.targets):
        if t.concurrency is not None and t.concurrency < 1:
            raise ManifestError(source, f"targets[{i}].concurrency", "expected a positive integer")
    sp = m.speed_phase
    for key in ("requests", "batch1_requests", "input_tokens", "output_tokens"):
        if getattr(sp, key) < 1:
            raise ManifestError(source, f"speed_phase.{key}", "expected a positive integer")
    if sp.warmup < 0:
        raise ManifestError(source, "speed_phase.warmup", "expected 0 or more requests")
    if not sp.duration > 0:
        raise ManifestError(source, "speed_phase.duration", "expected a positive number of seconds")
    if m.client.retries < 0:
        raise ManifestError(source, "client.retries", "expected 0 or more")
    if m.client.retry_budget < 0:
        raise ManifestError(source, "client.retry_budget", "expected 0 or more seconds")
    if m.client.request_timeout <= 0:
        raise ManifestError(source, "client.request_timeout", "expected a positive number of seconds")
    if not 0.0 <= m.client.error_threshold <= 1.0:
        raise ManifestError(source, "client.error_threshold", "expected a fraction between 0 and 1")
    seen: dict[str, int] = {}
    for i, t in enumerate(m.targets):
        p = f"targets[{i}]"
        if t.name in seen:
            raise ManifestError(source, f"{p}.name", f"duplicate target name {t.name!r} (also targets[{seen[t.name]}])")
        seen[t.name] = i
        if not t.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ManifestError(source, f"{p}.name", "expected letters, digits, '-', '_' or '.' (used in file names)")
        if t.launch is not None:
            if t.backend != "llamacpp":
                raise ManifestError(source, f"{p}.launch", "managed launch is only available for backend 'llamacpp'")
            if t.url is not None:
                raise ManifestError(source, f"{p}.url", "expected either url or launch, not both")
            has_path = t.launch.model_path is not None
            repo_keys = (t.launch.repo is not None) + (t.launch.filename is not None)
            if has_path == bool(repo_keys) or repo_keys == 1:
                raise ManifestError(source, f"{p}.launch", "expected either model_path, or repo and filename")
            if not 0 <= t.launch.port <= 65535:
                raise ManifestError(source, f"{p}.launch.port", "expected a port 0-65535 (0 = pick a free one)")
            if t.launch.parallel is not None and not 1 <= t.launch.parallel <= 4096:
                raise ManifestError(source, f"{p}.launch.parallel", "expected 1-4096 slots")
            if t.launch.binary is not None and t.launch.server == "llama-cpp-python":
                raise ManifestError(source, f"{p}.launch.binary", "a binary is llama-server's, not llama-cpp-python's")
            if t.launch.n_ctx < 1:
                raise ManifestError(source, f"{p}.launch.n_ctx", "expected a positive context size")
        elif t.url is None and not t.urls:
            raise ManifestError(source, f"{p}.url", "missing required key (or give urls, or a launch block)")
        elif t.url is not None and t.urls:
            raise ManifestError(source, f"{p}.urls", "expected either url or urls, not both")
        else:
            for j, url in enumerate(t.urls):
                _check_url(url, f"{p}.urls[{j}]", source)
            if t.url is not None:
                _check_url(t.url, f"{p}.url", source)
            if t.api_key_env and any(urlparse(u).username for u in (t.url, *t.urls) if u):
                raise ManifestError(
                    source,
                    f"{p}.api_key_env",
                    "expected either a bearer token (api_key_env) or credentials in the URL, not both "
                    "(both would be one Authorization header)",
                )


def parse_manifest(data: Any, source: str = "<manifest>") -> Manifest:
    """Validate plain data (as loaded from YAML) into a frozen Manifest; ``${VAR}`` is expanded."""
    if isinstance(data, dict) and LEGACY_CLIENT_KEY in data:
        # Manifests and run.json files written before the rename still load (and resume).
        if "client" in data:
            raise ManifestError(source, LEGACY_CLIENT_KEY, "expected either client or its old name load, not both")
        data = {("client" if k == LEGACY_CLIENT_KEY else k): v for k, v in data.items()}
    m = typing.cast(Manifest, build(Manifest, expand_env(data, "", source), "", source))
    m = dataclasses.replace(m, source=source)
    _check_semantics(m, source)
    return m


LEGACY_CLIENT_KEY = "load"  # the `client` section's name before it was renamed (it is not a load test)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a YAML manifest file: any input gives a Manifest or one ManifestError,
    in bounded time and memory (size cap, UTF-8 only, no aliases, bounded nesting)."""
    return parse_manifest(read_manifest_data(path), str(path))


NOISE_SUFFIXES = (("noise", None), ("noise-c1", 1))  # name suffix, requests in flight (None: the run's)


def with_noise_floor(m: Manifest) -> Manifest:
    """When ``run.noise_floor`` is set: after each model's reference target, two targets that send
    its samples again, at the run's concurrency and at concurrency 1 (idempotent: a resumed run
    already has them)."""
    if not m.run.noise_floor:
        return m
    names = {t.name for t in m.targets}
    by_model: dict[str, list[TargetConfig]] = {}
    for t in m.targets:
        if t.noise_of is None:
            by_model.setdefault(t.model, []).append(t)
    added: list[TargetConfig] = []
    for group in by_model.values():
        ref = next((t for q in REFERENCE_QUANTS for t in group if t.quantization.upper() == q), None)
        if ref is None:
            continue
        for suffix, concurrency in NOISE_SUFFIXES:
            name = f"{ref.name}.{suffix}"
            if name not in names:
                added.append(dataclasses.replace(ref, name=name, noise_of=ref.name, concurrency=concurrency))
    return dataclasses.replace(m, targets=(*m.targets, *added))


def with_overrides(m: Manifest, **changes: Any) -> Manifest:
    """Apply command-line overrides (``limit``, ``data_dir``, ``concurrency``) to a manifest."""
    if changes.get("limit") is not None:
        limit = changes["limit"]
        m = dataclasses.replace(m, tasks={k: dataclasses.replace(v, limit=limit) for k, v in m.tasks.items()})
    if changes.get("data_dir") is not None:
        m = dataclasses.replace(m, run=dataclasses.replace(m.run, data_dir=str(changes["data_dir"])))
    if changes.get("concurrency") is not None:
        m = dataclasses.replace(m, client=dataclasses.replace(m.client, concurrency=changes["concurrency"]))
    if changes.get("noise_floor"):
        m = dataclasses.replace(m, run=dataclasses.replace(m.run, noise_floor=True))
    if changes.get("speed_phase") is False:
        m = dataclasses.replace(m, speed_phase=dataclasses.replace(m.speed_phase, enabled=False))
    if changes.get("tasks"):
        wanted = set(changes["tasks"])
        unknown = sorted(wanted - set(m.tasks))
        if unknown:
            raise ManifestError(
                "--tasks",
                "",
                f"{', '.join(unknown)} not in this run's tasks (the manifest has: {', '.join(m.tasks)})",
            )
        m = dataclasses.replace(m, tasks={k: v for k, v in m.tasks.items() if k in wanted})
    if changes.get("backend") is not None:
        # Swap the serving backend of every target: same checkpoints, same URLs, another adapter.
        targets = tuple(dataclasses.replace(t, backend=changes["backend"]) for t in m.targets)
        m = dataclasses.replace(m, targets=targets)
    _check_semantics(m, m.source or "<command line>")
    return with_noise_floor(m)
