"""Managed llama.cpp servers: start llama.cpp's own ``llama-server`` (or llama-cpp-python's
``python -m llama_cpp.server``) through the supervisor, watch it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import supervisor
from orchestrator.llamacpp import build as builds
from orchestrator.llamacpp.build import BuildInfo, LaunchError, ServerDied, check_server_binary, find_llama_server
from orchestrator.manifest import LaunchConfig
from orchestrator.supervisor import describe_exit, free_port


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
        command = self.command()
        try:
            self.process = await supervisor.spawn(command, self.log_path)
        except OSError as exc:  # the binary gone or not executable, the log's folder unwritable
            raise LaunchError(f"cannot start {command[0]} for {self.name}: {exc.strerror or exc}") from None
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
        await supervisor.stop(self.process, 10)


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
        return builds.check_build(self.launch.python or sys.executable)


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
