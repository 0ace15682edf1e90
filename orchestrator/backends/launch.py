"""Managed llama.cpp servers: fetch the GGUF, start ``python -m llama_cpp.server``, wait, stop.

The child dies with the orchestrator even on SIGKILL (Linux parent-death signal), so no run
leaves an orphan server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from orchestrator.manifest import LaunchConfig


class LaunchError(RuntimeError):
    """A managed server that could not be started."""


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

    assert launch.repo is not None and launch.filename is not None  # checked by the manifest
    try:
        return Path(hf_hub_download(repo_id=launch.repo, filename=launch.filename))
    except Exception as exc:  # the hub raises many types; all mean the same to the user
        raise LaunchError(f"cannot fetch {launch.repo}/{launch.filename}: {type(exc).__name__}: {exc}") from None


class LlamaCppServer:
    """One ``llama_cpp.server`` child process."""

    def __init__(self, name: str, launch: LaunchConfig, model_path: Path, log_path: Path) -> None:
        self.name = name
        self.launch = launch
        self.model_path = model_path
        self.log_path = log_path
        self.port = launch.port or free_port()
        self.process: asyncio.subprocess.Process | None = None

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

    async def start(self, on_wait: Callable[[float], None] | None = None) -> str:
        """Start the server and wait until it answers ``/v1/models``."""
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
        await self._wait_ready(on_wait)
        return self.url

    async def _wait_ready(self, on_wait: Callable[[float], None] | None) -> None:
        assert self.process is not None
        started = time.monotonic()
        deadline = started + self.launch.startup_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if self.process.returncode is not None:
                    raise LaunchError(
                        f"llama.cpp server for {self.name} exited with code {self.process.returncode}: "
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/v1/models") as resp:
                        if resp.status == 200:
                            return
                now = time.monotonic()
                if now > deadline:
                    await self.stop()
                    raise LaunchError(
                        f"llama.cpp server for {self.name} not ready after {self.launch.startup_timeout:.0f} s "
                        f"(log: {self.log_path})"
                    )
                if on_wait is not None:
                    on_wait(now - started)
                await asyncio.sleep(0.25)

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

    def stop_now(self) -> None:
        """Synchronous last resort (interpreter exit paths)."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
