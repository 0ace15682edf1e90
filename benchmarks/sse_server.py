"""A local OpenAI-compatible SSE server for client benchmarks, in its own process.

- zero latency (default): the whole reply is prebuilt and sent in one write, N one-token chunks;
- ``--ttft-ms X --itl-ms Y``: chunk i is written at ``received + X + i*Y`` ms (absolute deadlines,
  so the schedule does not drift). The server keeps its own perf_counter stamps of every reply
  (request received, each chunk written, end written) under the reply's chunk ``id`` and serves
  them at ``GET /stamps``, so a client can compare what it measured with what the server did
  without the stamps weighing on the stream it is timing. perf_counter is CLOCK_MONOTONIC on
  Linux, shared by every process on the machine; only durations are compared anyway.

Why raw sockets instead of aiohttp.web: the server is the benchmark's ground truth, so it must
cost far less than the client it measures and say when a request really arrived. Each connection
is read with recvmsg and the kernel's receive timestamp (SO_TIMESTAMPING, software RX): "received"
is when the request reached the server's socket, not when a busy event loop got to it. Each chunk
is one non-blocking send from a timer callback, with no per-chunk coroutine.

Usage: python benchmarks/sse_server.py PORT TOKENS [--ttft-ms X --itl-ms Y] [--logprobs K]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import time
from typing import Any

Config = argparse.Namespace

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(text: str | None, finish: str | None, rid: str = "chatcmpl-bench", logprobs: int = 0) -> bytes:
    """One SSE event of an OpenAI chat stream (text None: the role-only first chunk); ``logprobs``:
    the token's top alternatives, as vLLM sends them when asked."""
    delta = {"content": text} if text is not None else {"role": "assistant", "content": ""}
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs and text is not None:
        top = [{"token": f" t{j}", "logprob": -0.5 - j, "bytes": [32, 116, 48 + j % 10]} for j in range(logprobs)]
        choice["logprobs"] = {"content": [{"token": text, "logprob": -0.5, "bytes": [32, 116], "top_logprobs": top}]}
    payload = {"id": rid, "object": "chat.completion.chunk", "choices": [choice]}
    return f"data: {json.dumps(payload)}\n\n".encode()


# The end of every reply: a usage-only chunk (%d: completion tokens), then [DONE].
USAGE_TAIL = b'data: {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": %d}}\n\ndata: [DONE]\n\n'


def http_chunk(data: bytes) -> bytes:
    """One piece of a chunked transfer-encoded body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def fixed_response(body: bytes, content_type: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def zero_latency_reply(tokens: int, logprobs: int = 0) -> bytes:
    """The whole zero-latency reply, prebuilt: the server spends nothing per token."""
    parts = [chunk(None, None)]
    parts += [chunk(" tok", "length" if i == tokens - 1 else None, logprobs=logprobs) for i in range(tokens)]
    parts.append(USAGE_TAIL % tokens)
    return fixed_response(b"".join(parts), "text/event-stream")


MODELS = fixed_response(json.dumps({"data": [{"id": "bench", "object": "model"}]}).encode(), "application/json")


STAMPS: dict[str, dict[str, Any]] = {}  # reply id -> the server's stamps, for GET /stamps


class PacedStream:
    """One paced reply: a timer callback per chunk at absolute deadlines on the loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Connection, cfg: Config, recv: float) -> None:
        self.loop, self.conn, self.cfg = loop, conn, cfg
        rid = f"bench-{len(STAMPS)}"
        self.stamps: dict[str, Any] = {"recv": recv, "chunks": [], "end": None}
        STAMPS[rid] = self.stamps
        self.token, self.last_token = http_chunk(chunk(" tok", None, rid)), http_chunk(chunk(" tok", "length", rid))
        self.timer: asyncio.TimerHandle | None = None
        conn.send(SSE_HEAD + http_chunk(chunk(None, None, rid)))
        # loop.time() and perf_counter are both CLOCK_MONOTONIC; deadlines are on the loop's clock.
        self.start = loop.time() - (time.perf_counter() - recv)
        self._schedule(0)

    def _schedule(self, i: int) -> None:
        deadline = self.start + (self.cfg.ttft_ms + i * self.cfg.itl_ms) / 1000.0
        self.timer = self.loop.call_at(deadline, self._write, i)

    def _write(self, i: int) -> None:
        last = i == self.cfg.tokens - 1
        self.conn.send(self.last_token if last else self.token)
        self.stamps["chunks"].append(time.perf_counter())
        if not last:
            self._schedule(i + 1)
            return
        self.conn.send(http_chunk(USAGE_TAIL % self.cfg.tokens) + b"0\r\n\r\n")
        self.stamps["end"] = time.perf_counter()
        self.timer = None
        self.conn.stream = None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


# Linux: software receive timestamps, reported as SCM_TIMESTAMPING (three timespecs, the first set).
SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
SOF_TIMESTAMPING_RX_SOFTWARE, SOF_TIMESTAMPING_SOFTWARE = 1 << 3, 1 << 4
RX_TIMESTAMPS = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
CMSG_SIZE = socket.CMSG_SPACE(48)


def kernel_stamp(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time of the data just read, on the perf_counter clock."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            if sec:
                # The stamp is CLOCK_REALTIME: move it onto perf_counter's clock through "now".
                return time.perf_counter() - (time.time() - (sec + nsec / 1e9))
    return None


class Connection:
    """HTTP/1.1 keep-alive on a raw non-blocking socket: Content-Length requests, one at a time."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, cfg: Config, zero_reply: bytes, open_set: set[Any]
    ) -> None:
        self.loop, self.sock, self.cfg, self.zero_reply, self.open_set = loop, sock, cfg, zero_reply, open_set
        open_set.add(self)
        self.buf = bytearray()
        self.out = bytearray()  # what the socket did not take yet
        self.stream: PacedStream | None = None
        self.request_start: float | None = None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, RX_TIMESTAMPS)
        loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        try:
            data, ancdata, _, _ = self.sock.recvmsg(65536, CMSG_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data, ancdata = b"", []
        if not data:
            self.close()
            return
        arrival = kernel_stamp(ancdata) or time.perf_counter()
        if not self.buf:
            self.request_start = arrival  # the request's first bytes reached the socket
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            recv = self.request_start if self.request_start is not None else arrival
            self.request_start = arrival if self.buf else None
            self.respond(head[0], recv)

    def respond(self, request_line: str, recv: float) -> None:
        method, path, _ = request_line.split(" ", 2)
        if method == "GET" and path == "/v1/models":
            self.send(MODELS)
        elif method == "GET" and path == "/stamps":
            self.send(fixed_response(json.dumps(STAMPS).encode(), "application/json"))
        elif method == "POST" and path == "/v1/chat/completions":
            if self.cfg.ttft_ms is None:
                self.send(self.zero_reply)
            else:
                self.stream = PacedStream(self.loop, self, self.cfg, recv)
        else:
            self.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def send(self, data: bytes) -> None:
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.out += data[sent:]
            self.loop.add_writer(self.sock.fileno(), self.writable)

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
            self.sock.close()
        self.open_set.discard(self)


async def serve(cfg: Config) -> None:
    loop = asyncio.get_running_loop()
    zero = zero_latency_reply(cfg.tokens, cfg.logprobs)
    listener = socket.create_server(("127.0.0.1", cfg.port), backlog=4096)
    listener.setblocking(False)
    connections: set[Connection] = set()  # open ones, referenced until closed

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            Connection(loop, sock, cfg, zero, connections)

    loop.add_reader(listener.fileno(), accept)
    await asyncio.Event().wait()  # until the process is terminated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("tokens", type=int)
    ap.add_argument("--ttft-ms", type=float)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    ap.add_argument("--logprobs", type=int, default=0, help="zero latency: top-k alternatives in every chunk")
    cfg = ap.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(serve(cfg))


if __name__ == "__main__":
    main()
