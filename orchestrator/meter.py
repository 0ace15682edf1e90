"""The meter: what one target's server holds and draws while the run measures it.

A thread samples, every ``interval`` seconds, each GPU's power and the device memory of the
server's processes (NVML, by process id) or of the GPUs the target names (``gpus:``, a Compose
service's ``device_ids``), and every few ticks the host RSS of a managed server's process tree.
``window(phase)`` reads every GPU's total-energy counter at a phase's two ends. ``footprint()``
reduces it all to run.json's ``Footprint`` (footprint.py), the GPUs attributed then: those named,
else those the server's processes were seen on.

NVML is released by the caller; the meter only reads it. Reads are C calls that release the GIL,
so the client's timing stamps are not delayed by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.footprint import EnergyWindow, Footprint, Memory, combine, gpu_energy, memory_reading
from orchestrator.nvml import Nvml, open_nvml
from orchestrator.weights import size_of

if TYPE_CHECKING:
    from orchestrator.manifest import TargetConfig
    from orchestrator.serving import Serving

INTERVAL_S = 0.1  # power samples: ten a second, five per gap_limit
RSS_EVERY = 5  # host RSS every fifth tick (walking a process tree costs more than an NVML read)


@dataclass
class _Window:
    phase: str
    wall: float
    t0: float
    counters0: dict[int, int | None]
    t1: float = 0.0
    counters1: dict[int, int | None] = field(default_factory=dict)
    requests: int = 0
    output_tokens: int = 0


class Meter:
    """Samples one target's server from ``start()`` to ``stop()``; ``pids()``: its processes now
    (a managed server's, else empty); ``gpus``: the GPUs the target names (indices or UUIDs)."""

    def __init__(
        self,
        nvml: Nvml | None,
        pids: Callable[[], Sequence[int]] = lambda: (),
        gpus: Sequence[int | str] = (),
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nvml = nvml
        self.clock = clock
        self.ticks = 0
        self.pids = pids
        self.interval = interval
        self.asked = list(gpus)
        self.pids_seen = False
        self.notes: list[str] = []
        self.named = [] if nvml is None else [g for g in (nvml.find(s) for s in gpus) if g is not None]
        if nvml is not None and len(self.named) < len(gpus):
            known = ", ".join(str(g.index) for g in nvml.gpus)
            self.notes.append(f"gpus {list(gpus)} not all on this host (GPUs here: {known}): named ones only")
        self.power: dict[int, list[tuple[float, float | None]]] = {}
        self.gpu_memory: list[int] = []  # bytes in use, per tick: the server's processes, or the named GPUs
        self.seen_on: set[int] = set()  # GPU indices the server's processes were seen on
        self.host: list[int] = []
        self.high_water: int | None = None
        self.tree_size = 0
        self.windows: list[_Window] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="orchestrator-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; the readings stay for ``footprint()``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One reading of everything (the thread's tick; tests call it at times they choose)."""
        now = self.clock()
        tick, self.ticks = self.ticks, self.ticks + 1
        pids = set(self.pids())
        self.pids_seen = self.pids_seen or bool(pids)
        if self.nvml is not None:
            used = 0
            for gpu in self.nvml.gpus:
                self.power.setdefault(gpu.index, []).append((now, self.nvml.power_mw(gpu.index)))
                if pids:
                    mine = {p: b for p, b in self.nvml.process_memory(gpu.index).items() if p in pids}
                    if mine:
                        self.seen_on.add(gpu.index)
                    used += sum(mine.values())
            if self.seen_on:  # the server's own processes, where NVML sees them
                self.gpu_memory.append(used)
            elif self.named:  # else the whole of the GPUs the target names
                self.gpu_memory.append(sum(self.nvml.memory_used(g.index) or 0 for g in self.named))
        if pids and tick % RSS_EVERY == 0:
            self._host(pids)

    def _host(self, pids: set[int]) -> None:
        import psutil

        total, procs = 0, []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        if total:
            self.host.append(total)
            self.tree_size = max(self.tree_size, len(procs))
        if len(procs) == 1:
            self.high_water = max(self.high_water or 0, _vm_hwm(procs[0].pid) or 0) or None

    def _counters(self) -> dict[int, int | None]:
        if self.nvml is None:
            return {}
        return {g.index: self.nvml.energy_mj(g.index) for g in self.nvml.gpus}

    @contextlib.contextmanager
    def window(self, phase: str, work: Callable[[], tuple[int, int]] | None = None) -> Iterator[_Window]:
        """A phase measured: the energy counters read at its two ends. The work done in it is
        ``work()`` at its end (requests, output tokens), or what the caller sets on the object
        yielded; a phase cut short keeps what it did."""
        w = _Window(phase, time.time(), self.clock(), self._counters())
        try:
            yield w
        finally:
            w.t1, w.counters1 = self.clock(), self._counters()
            if work is not None:
                w.requests, w.output_tokens = work()
            self.windows.append(w)

    def gpus(self) -> list[int]:
        """The target's GPUs: those it names, else those its processes were seen on."""
        return [g.index for g in self.named] if self.named else sorted(self.seen_on)

    def footprint(self, why_no_gpu: str | None) -> Footprint:
        """The readings reduced (``why_no_gpu``: why NVML could not be read, if it could not)."""
        host = None
        if self.host:
            how = (
                f"RSS of the server's {self.tree_size} processes, sampled"
                if self.tree_size > 1
                else "RSS of the server process, sampled; peak: the kernel's high-water mark (VmHWM)"
            )
            host = memory_reading(self.host, how, self.high_water if self.tree_size == 1 else None)
        gpu = None
        if self.gpu_memory:
            how = (
                "NVML device memory of the server's processes"
                if self.seen_on
                else f"NVML device memory in use on GPU {','.join(str(g.index) for g in self.named)} (every process)"
            )
            gpu = memory_reading(self.gpu_memory, how + ", sampled")
        memory = Memory(host=host, gpu=gpu)
        if host is None and gpu is None:
            if self.asked:
                memory.why = f"gpus: named, but {why_no_gpu or 'no reading of them'}"
            elif self.pids_seen:
                memory.why = "no reading of the server's processes"
            else:
                memory.why = "a server the orchestrator did not start, no gpus: named, no process RSS in its /metrics"
        return Footprint(memory=memory, energy=self.energy(why_no_gpu), notes=list(self.notes))

    def energy(self, why_no_gpu: str | None) -> list[EnergyWindow]:
        """Each window's energy over the target's GPUs."""
        out = []
        gpus = self.gpus() if self.nvml is not None else []
        for w in self.windows:
            if not gpus:
                why = why_no_gpu or "no GPU of this host is known to serve it (name them with gpus:)"
                seconds = round(w.t1 - w.t0, 6)
                window = EnergyWindow(phase=w.phase, started_at=round(w.wall, 3), seconds=seconds, why=why)
            else:
                assert self.nvml is not None
                per = {
                    self.nvml.gpus[i].uuid: gpu_energy(
                        w.t0, w.t1, w.counters0.get(i), w.counters1.get(i), self.power.get(i, []), self.interval
                    )
                    for i in gpus
                }
                window = combine(w.phase, w.wall, w.t1 - w.t0, per)
            window.requests, window.output_tokens = w.requests, w.output_tokens
            out.append(window)
        return out


@contextlib.contextmanager
def nvml_opened(notes: list[str]) -> Iterator[tuple[Nvml | None, str | None]]:
    """NVML for one run (or why not, said once in ``notes``: the run's one `note:` line about it),
    released at the end."""
    nvml, why = open_nvml()
    line = f"energy and GPU memory not measured: {why}"
    if why is not None and line not in notes:
        notes.append(line)
    try:
        yield nvml, why
    finally:
        if nvml is not None:
            nvml.close()


@contextlib.asynccontextmanager
async def metering(
    target: TargetConfig,
    live: Serving,
    nvml: tuple[Nvml | None, str | None],
    model_file: Path | None,
    facts: dict[str, Any],
) -> AsyncIterator[Meter]:
    """A target's meter while its server serves; on the way out, ``facts["footprint"]`` (run.json):
    its weights, memory and energy windows, kept whatever ended the target."""
    server = live.server

    def pids() -> list[int]:
        process = None if server is None else server.process
        return [process.pid] if process is not None and process.returncode is None else []

    weights = await asyncio.to_thread(
        size_of, model_file or (server.model_path if server else None), target.model_id, target.quantization
    )
    meter = Meter(nvml[0], pids, target.gpus)
    meter.start()
    try:
        yield meter
    finally:
        meter.stop()
        footprint = meter.footprint(nvml[1])
        footprint.weights = weights
        assert footprint.memory is not None
        if footprint.memory.main is None:
            footprint.memory = metrics_memory(facts) or footprint.memory
        facts["footprint"] = footprint.to_json()


# The Prometheus client's standard process metric (vLLM's API server exports it; TGI and llama.cpp do not).
RSS_METRIC = "process_resident_memory_bytes"


def metrics_memory(facts: dict[str, Any]) -> Memory | None:
    """Memory from the server's /metrics readings around the accuracy pass, where it exports RSS."""
    readings = (facts.get("metrics_before"), facts.get("metrics_after"))
    values = [int(m[RSS_METRIC]) for m in readings if m and RSS_METRIC in m]
    if not values:
        return None
    how = f"the server's /metrics {RSS_METRIC} (its API process only), before and after the accuracy pass"
    return Memory(host=memory_reading(values, how))


def _vm_hwm(pid: int) -> int | None:
    """A process's peak resident set (Linux /proc: VmHWM), bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
