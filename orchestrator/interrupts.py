"""One interrupt policy for every command: SIGTERM (docker stop, kill, a scheduler) is Ctrl-C.

In synchronous code (a Compose turn's up and down) SIGTERM raises KeyboardInterrupt as SIGINT
does; inside the event loop it cancels the main task, as asyncio does with SIGINT. Either way the
code that stops servers and keeps records runs, and the command exits 130. While a turn's servers
are taken down, both signals wait (``uninterrupted``): a second Ctrl-C must not leave GPU
containers running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (docker stop, kill, a scheduler) ends the run as Ctrl-C does: through the code that
    takes the current turn down, not past it."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM held off while a turn is taken down: a second Ctrl-C must not leave
    GPU containers running."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.asynccontextmanager
async def terminate_cancels() -> AsyncIterator[None]:
    """Inside the event loop: SIGTERM cancels the main task (Ctrl-C's effect under asyncio.run);
    the previous handler is back afterwards (a Compose run's, which takes its turn down)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
