"""Managed llama.cpp servers: fetch the GGUF, start ``python -m llama_cpp.server``, wait, stop.

The child dies with the orchestrator even on SIGKILL (Linux parent-death signal), so no run
leaves an orphan server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.manifest import LaunchConfig


class LaunchError(UserError, RuntimeError):
    """A managed server that could not be started."""


class ServerDied(LaunchError):
    """A managed server that exited while the run needed it (a crash, the OOM killer, SIGILL)."""


def describe_exit(returncode: int) -> str:
    """``code 1`` or ``signal 4 (SIGILL)``: asyncio reports a death by signal N as -N."""
    if returncode >= 0:
        return f"code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode} ({name})"


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a child: get SIGTERM when the orchestrator dies, however it dies (Linux's parent-death
    signal; elsewhere nothing). ``parent_pid`` closes the race of a parent already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


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
    import subprocess

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
    features = info.features
    flags = cpu_flags()
    if flags is not None and "sse2" in flags:  # an x86-64 CPU, whose flags name what it runs
        missing = [f for f in features if f in _CPU_FLAGS and _CPU_FLAGS[f] not in flags]
        if missing:
            raise LaunchError(
                f"llama.cpp in {python} was built for {', '.join(missing)}, which this CPU lacks; "
                "rebuild it with `bash scripts/install.sh` (ORCHESTRATOR_LLAMA_CMAKE_ARGS sets other flags)"
            )
    return info


class LlamaCppServer:
    """One ``llama_cpp.server`` child process."""

    def __init__(self, name: str, launch: LaunchConfig, model_path: Path, log_path: Path) -> None:
        self.name = name
        self.launch = launch
        self.model_path = model_path
        self.log_path = log_path
        self.port = launch.port or free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.build = BuildInfo(None, ())  # known once started
        self._death_logged = False

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line; the chat template comes from the GGUF's own metadata."""
        return [
            self.launch.python or sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.launch.n_ctx),
            # Queue concurrent requests instead of aborting the running one.
            "--interrupt_requests",
            "False",
            *self.launch.extra_args,
        ]

    async def start(self) -> str:
        """Start the server process (orchestrator.serving.launch_server waits until it serves)."""
        self.build = await asyncio.to_thread(check_build, self.launch.python or sys.executable)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - opening a log file does not block
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
                # Own process group: a terminal Ctrl-C reaches us, and we stop the child in order.
                start_new_session=True,
            )
        return self.url

    def exited(self) -> bool:
        """Whether the process has ended."""
        return self.process is not None and self.process.returncode is not None

    def death(self, what: str = "died") -> ServerDied:
        """The one-line error for a server that has exited: how, where its log is, its last lines."""
        assert self.process is not None and self.process.returncode is not None
        tail = self.log_tail()
        how = describe_exit(self.process.returncode)
        if not self._death_logged:
            # A server killed by a signal writes nothing itself: its log says what happened.
            self._death_logged = True
            with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
                log.write(f"[orchestrator] llama.cpp server {what}: {how}\n")
        return ServerDied(f"llama.cpp server for {self.name} {what}: {how}; log: {self.log_path}: {tail}")

    async def watch(self) -> ServerDied:
        """Wait until the server exits (it should not, until stopped) and return why."""
        assert self.process is not None
        await self.process.wait()
        return self.death()

    async def dead_within(self, grace: float) -> bool:
        """Whether the server has exited or exits within ``grace`` seconds.

        A request can see its connection reset a moment before the exit is reaped: this tells a
        crashed server from a request error without guessing."""
        assert self.process is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
        except TimeoutError:
            return False
        return True

    def log_tail(self, lines: int = 5) -> str:
        """Last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    async def stop(self) -> None:
        """Terminate, then kill if it does not exit within 10 s."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
