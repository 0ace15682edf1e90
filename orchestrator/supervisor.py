"""Child processes, supervised one way: every child (a managed llama.cpp server, the scoring
process) is started in a session of its own (a terminal's Ctrl-C is the orchestrator's to handle,
and it stops its children in order), dies with the orchestrator however the orchestrator dies
(Linux's parent-death signal: no orphan server after a kill -9), writes its output to a log file
rather than the terminal, and is stopped with a grace period before it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


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


async def spawn(
    argv: Sequence[str],
    log: Path | None,
    *,
    pipes: bool = False,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start a supervised child. ``log``: where its stderr goes (and its stdout, unless ``pipes``:
    then stdin and stdout are pipes to speak with it); None leaves stderr as it is."""
    out: IO[bytes] | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115, ASYNC230 (the child holds it; opening a log file does not block)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else out,
            stderr=out,
            env=None if env is None else dict(env),
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()


async def stop(proc: asyncio.subprocess.Process | None, grace: float, *, close_stdin: bool = False) -> None:
    """Ask a child to end (close its stdin, or SIGTERM), and kill it after ``grace`` seconds."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, OSError):
        if close_stdin and proc.stdin is not None:
            proc.stdin.close()
        else:
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
