"""A fake of NVIDIA's ``pynvml`` bindings (the functions orchestrator.nvml calls), with a clock the
test owns or the real one, so the meter can be checked against known truth: GPUs drawing a known
power (their energy counter is its exact integral), processes with known memory, a missing driver
or permission, a counter that resets, a GPU whose power cannot be read for a while (sampling gaps).

Use it as the module: ``open_nvml(FakeNvml(...))``, or put it in ``sys.modules["pynvml"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    """pynvml.NVMLError: ``value`` is NVML's return code."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    """One GPU: constant ``watts`` (or ``watts_at(t)``); its counter starts at ``counter_mj``."""

    uuid: str
    watts: float = 100.0
    counter_mj: float = 5_000_000.0
    processes: dict[int, int] = field(default_factory=dict)  # pid -> bytes
    used: int = 1 << 30
    energy_supported: bool = True
    watts_at: Callable[[float], float] | None = None
    unreadable: list[tuple[float, float]] = field(default_factory=list)  # [from, to) with no power reading
    reset_at: float | None = None  # the counter starts again from 0 at this time (a driver reload)


class FakeNvml:
    """The bindings' module surface over ``gpus``; ``clock``: the time the GPUs live in."""

    NVMLError = NVMLError
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_GPU_IS_LOST = 15

    def __init__(
        self, gpus: list[FakeGpu], clock: Callable[[], float] = time.monotonic, init_error: int | None = None
    ) -> None:
        self.gpus = gpus
        self.clock = clock
        self.init_error = init_error
        self.t0 = clock()
        self.shutdown = False

    # -- what the meter calls ------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid

    def nvmlDeviceGetName(self, h: FakeGpu) -> bytes:
        return b"Fake H100"  # old bindings return bytes

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        t = self.clock()
        if any(a <= t < b for a, b in h.unreadable):
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        return round(self.power_w(h, t) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        if not h.energy_supported:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return int(self.energy_mj(h, self.clock()))

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(used=h.used, total=80 << 30, free=(80 << 30) - h.used)

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in h.processes.items()]

    # -- the truth ---------------------------------------------------------------------------
    def power_w(self, h: FakeGpu, t: float) -> float:
        """The GPU's draw at ``t``, watts."""
        return h.watts_at(t) if h.watts_at is not None else h.watts

    def joules(self, h: FakeGpu, a: float, b: float, steps: int = 2000) -> float:
        """The energy it really drew over [a, b]."""
        if h.watts_at is None:
            return h.watts * (b - a)
        dt = (b - a) / steps
        return sum(self.power_w(h, a + (i + 0.5) * dt) * dt for i in range(steps))

    def energy_mj(self, h: FakeGpu, t: float) -> float:
        """The counter at ``t``: its start plus the integral since, from 0 again after a reset."""
        if h.reset_at is not None and t >= h.reset_at:
            return 1000 * self.joules(h, h.reset_at, t)
        return h.counter_mj + 1000 * self.joules(h, self.t0, t)


class Clock:
    """A clock the test moves."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
