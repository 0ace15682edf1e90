"""llama.cpp builds: where the GGUF and the server binary are, which version and instruction sets
a build has, and refusing one this CPU cannot run (a -march=native build dies with SIGILL)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.manifest import LaunchConfig
from orchestrator.supervisor import describe_exit


class LaunchError(UserError, RuntimeError):
    """A managed server that could not be started."""


class ServerDied(LaunchError):
    """A managed server that exited while the run needed it (a crash, the OOM killer, SIGILL)."""


def resolve_model(launch: LaunchConfig, base: Callable[[str], Path]) -> Path:
    """Local GGUF path, or download ``repo``/``filename`` through huggingface_hub (cached)."""
    if launch.model_path is not None:
        path = base(launch.model_path)
        if not path.is_file():
            raise LaunchError(f"model file not found: {path}")
        return path
    from huggingface_hub import hf_hub_download

    from orchestrator.hub import fetch

    repo, filename = launch.repo, launch.filename
    assert repo is not None and filename is not None  # checked by the manifest
    return Path(fetch(f"{repo}/{filename}", lambda: hf_hub_download(repo_id=repo, filename=filename)))


# /proc/cpuinfo flag of each instruction set llama.cpp's system info can report as compiled in.
_CPU_FLAGS = {
    "SSE3": "pni",
    "SSE42": "sse4_2",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512_vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


@dataclass(frozen=True)
class BuildInfo:
    """What a Python's llama-cpp-python is: its version and the features llama.cpp was built with."""

    version: str | None
    features: tuple[str, ...]  # SSE3, AVX2, ..., LLAMAFILE, OPENMP (llama.cpp's system info)


# The version on the first line (unless it is the only one: a stand-in that prints system info only).
_BUILD_CODE = "import llama_cpp; print(llama_cpp.__version__); print(llama_cpp.llama_print_system_info().decode())"


def build_info(python: str) -> BuildInfo:
    """Ask ``python``'s llama-cpp-python what it is."""

    code = _BUILD_CODE
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"cannot run {python}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"llama-cpp-python does not load in {python}: {last}")
    lines = done.stdout.strip().splitlines()
    version = lines[0].strip() if len(lines) > 1 else None
    found = []
    for part in "\n".join(lines[1:] or lines).replace("|", "\n").splitlines():
        key, _, value = part.partition("=")
        if value.strip() == "1":
            found.append(key.strip().removeprefix("CPU : "))
    return BuildInfo(version, tuple(found))


def cpu_flags() -> set[str] | None:
    """This CPU's flags (Linux x86-64), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


@functools.lru_cache(maxsize=8)
def check_build(python: str) -> BuildInfo:
    """The build of ``python``'s llama.cpp; a build this CPU cannot run is refused with one line,
    before it would die with SIGILL in the middle of a run."""
    info = build_info(python)
    _refuse_missing(info, f"llama.cpp in {python}", "bash scripts/install.sh")
    return info


def _refuse_missing(info: BuildInfo, what: str, rebuild: str) -> None:
    flags = cpu_flags()
    if flags is not None and "sse2" in flags:  # an x86-64 CPU, whose flags name what it runs
        missing = [f for f in info.features if f in _CPU_FLAGS and _CPU_FLAGS[f] not in flags]
        if missing:
            raise LaunchError(
                f"{what} was built for {', '.join(missing)}, which this CPU lacks; "
                f"rebuild it with `{rebuild}` (ORCHESTRATOR_LLAMA_CMAKE_ARGS sets other flags)"
            )


def _server_build(binary: str) -> BuildInfo:

    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"cannot run llama-server {binary}: {exc}") from None
    text = done.stdout + done.stderr
    if done.returncode != 0:
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"llama-server {binary} does not run: {describe_exit(done.returncode)}: {last}")
    version = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("version:")), None)
    resolved = Path(binary).resolve()  # through a link on PATH, to the build's own folder
    stamp = resolved.with_name(resolved.name + ".CMAKE_ARGS")
    try:
        args = stamp.read_text().split()
    except OSError:
        return BuildInfo(version, ())
    # -DGGML_AVX2=ON -> AVX2: the names llama.cpp's system info uses.
    features = [a[len("-DGGML_") : -len("=ON")] for a in args if a.startswith("-DGGML_") and a.endswith("=ON")]
    return BuildInfo(version, tuple(f for f in features if f != "NATIVE"))


@functools.lru_cache(maxsize=8)
def check_server_binary(binary: str) -> BuildInfo:
    """A llama-server binary's build; one built for instructions this CPU lacks is refused."""
    info = _server_build(binary)
    _refuse_missing(info, f"llama-server {binary}", "bash scripts/build_llama_server.sh")
    return info


def find_llama_server(launch: LaunchConfig, base: Callable[[str], Path]) -> str | None:
    """The llama-server binary to use: the manifest's, else ``llama-server`` on PATH, else the
    one scripts/install.sh put beside the orchestrator's Python; None when there is none."""
    if launch.binary is not None:
        path = base(launch.binary) if os.sep in launch.binary else shutil.which(launch.binary)
        if path is None or not os.access(path, os.X_OK):
            raise LaunchError(f"llama-server binary not found or not executable: {launch.binary}")
        return str(path)
    found = shutil.which("llama-server")
    if found is not None:
        return found
    beside = Path(sys.executable).parent / "llama-server"
    return str(beside) if os.access(beside, os.X_OK) else None
