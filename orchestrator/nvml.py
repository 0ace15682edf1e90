"""NVIDIA's management library (NVML) through its official bindings, ``nvidia-ml-py`` (an optional
extra: ``pip install 'orchestrator[gpu]'``), reduced to what the meter reads: each GPU's identity,
total-energy counter, power draw, device memory in use and per-process memory.

Every failure is a reason, never an exception out of here: no bindings, no driver, no permission,
no GPU (``open_nvml``), a GPU that cannot read a figure (None for that figure).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

INSTALL_HINT = "pip install 'orchestrator[gpu]'"

# NVML's error codes (nvml.h) and what each means to a user; the bindings export the same names.
_WHY = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": "no NVIDIA driver (libnvidia-ml.so not found)",
    "NVML_ERROR_DRIVER_NOT_LOADED": "the NVIDIA driver is not loaded",
    "NVML_ERROR_NO_PERMISSION": "no permission to read NVML",
    "NVML_ERROR_INSUFFICIENT_POWER": "a GPU is not powered",
}


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML lists it."""

    index: int
    uuid: str
    name: str


class Nvml:
    """An initialised NVML: readings by GPU index; a figure the GPU cannot give is None. Calls are
    serialised (the meter's thread and the event loop's window reads share it)."""

    def __init__(self, module: Any) -> None:
        self._nv = module
        self._lock = threading.Lock()
        count = module.nvmlDeviceGetCount()
        self._handles = [module.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.gpus = [Gpu(i, _text(module.nvmlDeviceGetUUID(h)), _text(module.nvmlDeviceGetName(h)))
                     for i, h in enumerate(self._handles)]  # fmt: skip

    def _read(self, fn: str, index: int) -> Any:
        try:
            with self._lock:
                return getattr(self._nv, fn)(self._handles[index])
        except self._nv.NVMLError:
            return None  # not supported on this GPU, lost, or momentarily unreadable: a gap

    def energy_mj(self, index: int) -> int | None:
        """Total energy since the driver loaded, millijoules (Volta and newer)."""
        value = self._read("nvmlDeviceGetTotalEnergyConsumption", index)
        return None if value is None else int(value)

    def power_mw(self, index: int) -> int | None:
        """Power draw now, milliwatts."""
        value = self._read("nvmlDeviceGetPowerUsage", index)
        return None if value is None else int(value)

    def memory_used(self, index: int) -> int | None:
        """Device memory in use by every process, bytes."""
        info = self._read("nvmlDeviceGetMemoryInfo", index)
        return None if info is None else int(info.used)

    def process_memory(self, index: int) -> dict[int, int]:
        """Device memory per compute process on this GPU (pid -> bytes; pids as this host sees them)."""
        procs = self._read("nvmlDeviceGetComputeRunningProcesses", index) or []
        return {int(p.pid): int(p.usedGpuMemory) for p in procs if getattr(p, "usedGpuMemory", None) is not None}

    def find(self, spec: int | str) -> Gpu | None:
        """A GPU by index or UUID (a Compose ``device_ids`` entry or a target's ``gpus``)."""
        text = str(spec)
        return next((g for g in self.gpus if str(g.index) == text or g.uuid == text), None)

    def close(self) -> None:
        """Release NVML."""
        try:
            with self._lock:
                self._nv.nvmlShutdown()
        except self._nv.NVMLError:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_nvml(module: ModuleType | None = None) -> tuple[Nvml | None, str | None]:
    """NVML ready to read, or None and the one line that says why not (``module``: the bindings,
    imported here when not given)."""
    if module is None:
        try:
            module = importlib.import_module("pynvml")
        except ImportError:
            return None, f"nvidia-ml-py is not installed ({INSTALL_HINT})"
    try:
        module.nvmlInit()
    except module.NVMLError as exc:
        return None, _reason(module, exc)
    except OSError as exc:  # the shared library itself failed to load
        return None, f"NVML could not be loaded ({exc})"
    try:
        nvml = Nvml(module)
    except module.NVMLError as exc:
        module.nvmlShutdown()
        return None, _reason(module, exc)
    if not nvml.gpus:
        nvml.close()
        return None, "no NVIDIA GPU on this host"
    return nvml, None


def _reason(module: Any, exc: Any) -> str:
    code = getattr(exc, "value", None)
    for name, why in _WHY.items():
        if code is not None and code == getattr(module, name, object()):
            return why
    return f"NVML failed ({exc})"
