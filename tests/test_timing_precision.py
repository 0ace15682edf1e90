"""Timing precision under a busy client: arrival stamps and the loop pacer.

A stamp must say when bytes reached the client, not when the coroutine consuming them got to run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import aiohttp
import pytest

from orchestrator.backends import ChatRequest, OpenAIChat
from orchestrator.backends import http as http_backend
from orchestrator.backends.http import ArrivalStampingHandler, make_session, read_sse
from orchestrator.timing import LoopPacer

HOG_S = 0.12  # how long a busy client is kept from reading, after each content chunk arrived
GAP_S = 0.2  # between the server's chunks: longer than the hog, so every arrival is on its own


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class PacedServer(threading.Thread):
    """One streamed chat reply from another thread, with the perf_counter of every send."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__(daemon=True)
        self.texts = texts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        # perf_counter just before and just after each send: the client can read the bytes (and
        # stamp them) before this thread gets the GIL back from sendall, so a stamp lies in
        # [before, ...), and "late" is measured from after.
        self.before: list[float] = []
        self.sent: list[float] = []

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            fields = (line.partition(b":") for line in head.split(b"\r\n"))
            length = next(int(v) for k, _, v in fields if k.lower() == b"content-length")
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i, text in enumerate(self.texts):
                time.sleep(GAP_S)
                finish = "stop" if i == len(self.texts) - 1 else None  # a whole reply ends with its reason
                event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
                self.before.append(time.perf_counter())
                conn.sendall(_http_chunk(f"data: {json.dumps(event)}\n\n".encode()))
                self.sent.append(time.perf_counter())
            # [DONE] on its own too: sent right after the last chunk, it could arrive while the
            # client is held by that chunk's hog, and no stamp can precede the loop's next read.
            time.sleep(GAP_S)
            self.before.append(time.perf_counter())
            conn.sendall(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            self.sent.append(time.perf_counter())
            time.sleep(0.2)


class HoggingHandler(ArrivalStampingHandler):
    """Puts HOG_S of blocking work in the loop's ready queue ahead of the stream's reader."""

    hogs = 0

    def data_received(self, data: bytes) -> None:
        if b"content" in data:
            HoggingHandler.hogs += 1
            asyncio.get_running_loop().call_soon(time.sleep, HOG_S)
        super().data_received(data)


async def test_stamps_are_taken_on_arrival_not_when_the_reader_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_backend, "ArrivalStampingHandler", HoggingHandler)
    server = PacedServer(["Hel", "lo"])
    server.start()
    backend = OpenAIChat(server.url, make_session(2, 10.0), model="m")
    try:
        c = await backend.generate(ChatRequest((("user", "Hi"),), max_tokens=4, seed=0))
    finally:
        await backend.close()
    server.join(5)
    assert c.text == "Hello"
    assert HoggingHandler.hogs == 2  # the session's connections use the stamping protocol
    # Each chunk waited HOG_S in the client before its reader ran; the stamps do not show it.
    assert len(c.stamps.chunks) == 2
    for got, before, sent in zip(c.stamps.chunks, server.before, server.sent, strict=False):
        assert before <= got < sent + HOG_S / 2, (before, got, sent)
    assert server.before[-1] <= c.stamps.t_end < server.sent[-1] + HOG_S / 2


async def test_events_completed_by_different_reads_keep_their_own_stamps() -> None:
    loop = asyncio.get_running_loop()
    handler = ArrivalStampingHandler(loop)
    handler.connection_made(Mock(get_extra_info=Mock(return_value=None)))  # a connected protocol
    content = aiohttp.StreamReader(handler, 2**16, loop=loop)
    resp: Any = SimpleNamespace(
        content=content, connection=SimpleNamespace(protocol=handler), content_type="text/event-stream"
    )
    reader = asyncio.create_task(read_sse(resp))
    await asyncio.sleep(0)  # the reader is watching

    def arrive(data: bytes, stamp: float) -> None:
        # What ArrivalStampingHandler.data_received does once aiohttp's parser fed the body.
        content.feed_data(data)
        handler.arrivals.append((stamp, content.total_bytes))

    # Three reads land before the reader runs once; an event split across two reads belongs
    # to the read that completed it.
    arrive(b'data: {"n": 1}\n\ndata: {"n"', 1.0)
    arrive(b": 2}\n\n: comment\n", 2.0)
    arrive(b'data: {"n": 3}\n\ndata: [DONE]\n\n', 3.0)
    body = await reader
    assert [(stamp, event["n"]) for stamp, event in body.decoded()] == [(1.0, 1), (2.0, 2), (3.0, 3)]
    assert body.t_end == 3.0
    assert handler.watched is None and handler.arrivals == []  # the connection is left clean


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


@pytest.mark.parametrize("make_loop", [asyncio.new_event_loop, "uvloop"], ids=["asyncio", "uvloop"])
def test_pacer_polls_the_sockets_between_heavy_steps(make_loop: Any) -> None:
    factory = _uvloop_factory() if make_loop == "uvloop" else make_loop
    log: list[str] = []

    async def main(paced: bool) -> None:
        loop = asyncio.get_running_loop()
        pacer = LoopPacer()
        rx, tx = socket.socketpair()
        tx.send(b"x")  # rx stays readable: its callback runs at every poll of the loop
        loop.add_reader(rx.fileno(), log.append, "poll")

        async def heavy(i: int) -> None:
            if paced:
                await pacer.turn()
            else:
                await asyncio.sleep(0)
            log.append(f"step{i}")

        await asyncio.sleep(0.01)
        log.clear()
        await asyncio.gather(*(heavy(i) for i in range(5)))
        loop.remove_reader(rx.fileno())
        rx.close()
        tx.close()

    def steps_back_to_back() -> int:
        steps = [e for e in log if e != "poll"]
        assert len(steps) == 5
        return sum(a != "poll" and b != "poll" for a, b in itertools.pairwise(log))

    loop = factory()
    try:
        loop.run_until_complete(main(paced=False))
        assert steps_back_to_back() == 4  # unpaced: all five in one pass, no poll between
        loop.run_until_complete(main(paced=True))
        assert steps_back_to_back() == 0  # paced: the sockets are polled before every step
    finally:
        loop.close()
