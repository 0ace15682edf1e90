"""Managed llama.cpp servers: fetch the GGUF, start llama.cpp's own ``llama-server`` (or
llama-cpp-python's ``python -m llama_cpp.server``), wait, stop.

The child dies with the orchestrator even on SIGKILL (Linux parent-death signal), so no run
leaves an orphan server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class ManagedServer:
    """One llama.cpp server child process: the parts both servers share (start, watch, stop)."""

    kind = "llama.cpp"

    def __init__(self, name: str, launch: LaunchConfig, model_path: Path, log_path: Path, slots: int) -> None:
        self.name = name
        self.launch = launch
        self.model_path = model_path
        self.log_path = log_path
        self.slots = slots  # requests the run keeps in flight: the slots a server that batches gets
        self.port = launch.port or free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.build = BuildInfo(None, ())  # known once started
        self._death_logged = False

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line."""
        raise NotImplementedError

    def where(self) -> list[str]:
        """The model and the loopback address, spelled alike by both servers."""
        return ["--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.port)]

    def settings(self) -> dict[str, Any]:
        """What the launcher chose for the server (run.json; the server's own answer sits beside)."""
        return {"server": self.kind}

    def check_build(self) -> BuildInfo:
        """The build's version and instruction sets; refuses one this CPU cannot run."""
        raise NotImplementedError

    def measured(self, described: dict[str, Any]) -> dict[str, Any]:
        """What the running server says it has (from its adapter's ``describe()``)."""
        return {}

    def record(self, described: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The launch as run.json keeps it, and a line when the server runs other settings than
        the launcher chose (an ``extra_args`` override, a server that caps them)."""
        settings, measured = self.settings(), self.measured(described)
        differ = [f"{k} {measured[k]} (asked {settings[k]})" for k in measured if measured[k] != settings.get(k)]
        note = f"{self.kind} runs with {', '.join(differ)}" if differ else None
        return {
            "command": self.command(),
            "log": str(self.log_path),
            "build": list(self.build.features),
            "settings": settings,
            "measured": measured,
        }, note

    async def start(self) -> str:
        """Start the server process (orchestrator.serving.launch_server waits until it serves)."""
        self.build = await asyncio.to_thread(self.check_build)
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


class LlamaCppPythonServer(ManagedServer):
    """llama-cpp-python's server (``python -m llama_cpp.server``): one request decoded at a time."""

    kind = "llama-cpp-python"

    def command(self) -> list[str]:
        """The command line; the chat template comes from the GGUF's own metadata."""
        return [
            self.launch.python or sys.executable,
            "-m",
            "llama_cpp.server",
            *self.where(),
            "--n_ctx",
            str(self.launch.n_ctx),
            # Queue concurrent requests instead of aborting the running one.
            "--interrupt_requests",
            "False",
            *self.launch.extra_args,
        ]

    def settings(self) -> dict[str, Any]:
        """One request at a time, whatever the concurrency: it has no slots."""
        return {"server": self.kind, "n_ctx": self.launch.n_ctx, "slots": 1}

    def check_build(self) -> BuildInfo:
        """llama-cpp-python's own report of its build, checked against this CPU."""
        return check_build(self.launch.python or sys.executable)


# llama-server's host-RAM prompt cache (--cache-ram, 8 GiB by default) is off: on an H200, with it
# new tasks started 0.17-0.5 s apart and TTFT p50 at concurrency 1 was 372 ms, without it 11.5 ms
# (benchmarks/llama_servers.py measures the same choice on this machine). Each slot's own KV
# prefix reuse (cache_prompt) stays on, as a deployment would have it.
LLAMA_SERVER_CACHE_RAM_MIB = 0


def llama_server_options(slots: int, n_ctx_per_slot: int) -> list[str]:
    """The options of every llama-server the orchestrator starts (launch) or deploys (Compose):
    ``slots`` requests decoded together, each with ``n_ctx_per_slot`` of context (llama-server
    splits --ctx-size evenly between slots), the host-RAM prompt cache off, the GGUF's own chat
    template rendered by Jinja, Prometheus /metrics on, no web UI."""
    return [
        "--parallel",
        str(slots),
        "--ctx-size",
        str(n_ctx_per_slot * slots),
        "--cache-ram",
        str(LLAMA_SERVER_CACHE_RAM_MIB),
        "--jinja",
        "--metrics",  # Prometheus /metrics: the server's own queue and throughput counters
        "--no-webui",
    ]


class LlamaServer(ManagedServer):
    """llama.cpp's own C++ server: ``slots`` requests decoded together (continuous batching)."""

    kind = "llama-server"

    def __init__(
        self, binary: str, name: str, launch: LaunchConfig, model_path: Path, log_path: Path, slots: int
    ) -> None:
        super().__init__(name, launch, model_path, log_path, slots)
        self.binary = binary

    @property
    def parallel(self) -> int:
        """Slots: the manifest's, else as many as the run keeps requests in flight."""
        return self.launch.parallel or self.slots

    def command(self) -> list[str]:
        """The command line. The KV cache is split evenly between slots (-c / --parallel), so each
        slot gets the manifest's n_ctx; the chat template is the GGUF's, rendered by Jinja
        (--jinja), as llama-cpp-python and the model's own tokenizer render it (Qwen2's adds its
        default system turn, which llama.cpp's built-in chatml would not)."""
        return [
            self.binary,
            *self.where(),
            *llama_server_options(self.parallel, self.launch.n_ctx),
            *self.launch.extra_args,  # last: llama.cpp takes the last value of a repeated option
        ]

    def settings(self) -> dict[str, Any]:
        """Slots, context per slot and prompt cache as asked (extra_args may override them; the
        server's own /props answer is recorded beside)."""
        return {
            "server": self.kind,
            "binary": self.binary,
            "slots": self.parallel,
            "n_ctx_per_slot": self.launch.n_ctx,
            "cache_ram_mib": LLAMA_SERVER_CACHE_RAM_MIB,
        }

    def check_build(self) -> BuildInfo:
        """The binary's version, and its instruction sets as scripts/build_llama_server.sh stamped
        them beside it (``llama-server.CMAKE_ARGS``; a binary built elsewhere is run unchecked:
        its features are unknown)."""
        return check_server_binary(self.binary)

    def measured(self, described: dict[str, Any]) -> dict[str, Any]:
        """Slots and context per slot from the server's ``/props``."""
        props = described.get("props") or {}
        found: dict[str, Any] = {}
        if isinstance(props.get("total_slots"), int):
            found["slots"] = props["total_slots"]
        n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
        if isinstance(n_ctx, int):
            found["n_ctx_per_slot"] = n_ctx
        return found


def _server_build(binary: str) -> BuildInfo:
    import subprocess

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


def managed_server(
    name: str, launch: LaunchConfig, model_path: Path, log_path: Path, slots: int, base: Callable[[str], Path]
) -> ManagedServer:
    """The server a managed target gets (``launch.server``; auto: llama-cpp-python's when the
    manifest names its ``python``, else llama-server where one is found, else llama-cpp-python's)."""
    if launch.server == "llama-server" or (launch.server == "auto" and launch.python is None):
        binary = find_llama_server(launch, base)
        if binary is not None:
            return LlamaServer(binary, name, launch, model_path, log_path, slots)
        if launch.server == "llama-server":
            raise LaunchError(
                f"{name}: no llama-server found (on PATH or beside {sys.executable}); build one with "
                "`bash scripts/build_llama_server.sh` and give its path as launch.binary"
            )
    return LlamaCppPythonServer(name, launch, model_path, log_path, slots)
