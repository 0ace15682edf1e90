"""The shared HTTP transport of every adapter: one aiohttp session per target, whose connections
stamp arrivals; the timed POST (send stamp, pacer turn, trace, error mapping, one at-once resend
on a closed kept-alive connection); SSE and JSON readers that turn a reply that never arrived whole
into an error; Retry-After; the Prometheus scrape; and ``HTTPBackend``, the adapters' base.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.client_proto import ResponseHandler

from orchestrator.backends.base import (
    BackendError,
    FatalError,
    TransientError,
    error_for_status,
)
from orchestrator.secrets import split_credentials
from orchestrator.timing import LoopPacer, Stamps

# Counts the tokens of a completion text with the model's own tokenizer: (count, source) or None.

# SSE lines can be long (a whole completion in one chunk from some servers); aiohttp refuses
# lines above twice its read buffer, so give it room.
READ_BUFSIZE = 4 * 1024 * 1024


MAX_STALE_RESENDS = 64  # at-once resends of one request over stale kept-alive connections


def _with_resends(error: BackendError, stamps: Stamps) -> BackendError:
    error.resends = stamps.resends  # the record counts every send
    return error


async def _on_reused(session: Any, ctx: Any, params: Any) -> None:
    stamps = ctx.trace_request_ctx
    if isinstance(stamps, Stamps):
        stamps.reused = True


async def _on_body_sent(session: Any, ctx: Any, params: Any) -> None:
    stamps = ctx.trace_request_ctx
    if isinstance(stamps, Stamps) and stamps.t_wire is None:
        stamps.t_wire = time.perf_counter()


class ArrivalStampingHandler(ResponseHandler):
    """aiohttp's connection protocol, plus a stamp of when bytes reached user space.

    ``data_received`` runs when the event loop reads the socket. The coroutine consuming the
    stream runs later, after whatever else is in the loop's ready queue; under load (many
    streams ending at once, each building its record) that is milliseconds. Stamping here keeps
    that wait out of TTFT, ITL and E2E. A reader that watches a body gets one
    ``(stamp, body bytes received so far)`` per arrival, so each event can be matched to the
    read that completed it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.last_rx = 0.0
        self.watched: aiohttp.StreamReader | None = None
        self.arrivals: list[tuple[float, int]] = []

    def data_received(self, data: bytes) -> None:
        """Stamp, then let aiohttp parse (b"" is aiohttp resuming its parser: nothing arrived)."""
        if not data:
            super().data_received(data)
            return
        now = time.perf_counter()
        self.last_rx = now
        super().data_received(data)
        if self.watched is not None:
            self.arrivals.append((now, self.watched.total_bytes))


class StampingConnector(aiohttp.TCPConnector):
    """A TCPConnector whose connections stamp arrivals (ArrivalStampingHandler)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp builds every connection's protocol with this factory. It is private (stable
        # through 3.x); should it change, read_sse falls back to stamping when it reads, and
        # tests/test_timing_precision.py fails on the lost precision.
        if isinstance(getattr(self, "_factory", None), functools.partial):
            self._factory = functools.partial(ArrivalStampingHandler, loop=self._loop)  # type: ignore[assignment]


def make_session(concurrency: int, timeout: float, api_key: str | None = None) -> aiohttp.ClientSession:
    """The one shared session of a target: connection pool sized to the concurrency."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_body_sent)
    trace.on_connection_reuseconn.append(_on_reused)
    return aiohttp.ClientSession(
        trace_configs=[trace],
        connector=StampingConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0)),
        read_bufsize=READ_BUFSIZE,
        headers=headers,
        # Request bodies through orjson (aiohttp's default is json.dumps, ~30 µs a request here).
        json_serialize=_json_text,
    )


def _json_text(body: Any) -> str:
    return orjson.dumps(body).decode()


@dataclass
class SSEBody:
    """The data payloads of a Server-Sent Events body, each with the stamp of the read it came in."""

    events: list[tuple[float, bytes]]  # (perf_counter of the network read, raw ``data:`` payload)
    t_end: float  # the read that brought ``[DONE]``, or the connection's end
    done: bool = False  # ``data: [DONE]`` arrived (OpenAI's end marker; TGI sends none)

    def decoded(self) -> list[tuple[float, dict[str, Any]]]:
        """The JSON events with their stamps; a malformed or non-object payload is a FatalError."""
        if not self.events:
            return []
        payloads = [payload for _, payload in self.events]
        try:
            # One orjson call for the whole stream: ~3x cheaper than json.loads per event, and
            # this runs on the event loop when a stream ends, while others are being stamped.
            values = orjson.loads(b"[" + b",".join(payloads) + b"]")
        except orjson.JSONDecodeError:
            values = None
        if values is None or len(values) != len(payloads):  # a payload with a top-level comma, too
            values = []
            for payload in payloads:
                try:
                    values.append(orjson.loads(payload))
                except orjson.JSONDecodeError as exc:
                    # A cut or garbled event: the server (or a proxy) may do better next time.
                    raise TransientError(f"malformed SSE data: {payload[:200]!r}", kind="malformed") from exc
        for payload, value in zip(payloads, values, strict=True):
            if not isinstance(value, dict):
                raise TransientError(f"unexpected SSE payload: {payload[:200]!r}", kind="bad_shape")
        return [(stamp, value) for (stamp, _), value in zip(self.events, values, strict=True)]


def _arrival_handler(resp: aiohttp.ClientResponse) -> ArrivalStampingHandler | None:
    """The response's connection protocol when it stamps arrivals (see StampingConnector)."""
    proto = resp.connection.protocol if resp.connection is not None else None
    return proto if isinstance(proto, ArrivalStampingHandler) else None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _sample(data: bytes) -> str:
    return data[:200].decode("utf-8", errors="replace")


async def read_json_body(resp: aiohttp.ClientResponse, stamps: Stamps) -> Any:
    """A whole JSON reply; its end is stamped when its last bytes arrived (see read_sse). A body
    that is not JSON (a proxy's HTML page, a cut-off reply) is a TransientError, never a crash."""
    proto = _arrival_handler(resp)
    data = await resp.read()
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        kind = "content_type" if "json" not in resp.content_type else "malformed"
        raise TransientError(
            f"reply is not JSON (Content-Type {resp.content_type or 'none'}): {_sample(data)!r}", kind=kind
        ) from None
    stamps.mark_end()
    if proto is not None and proto.last_rx:
        stamps.t_end = min(stamps.t_end, proto.last_rx)
    return payload


async def read_sse(resp: aiohttp.ClientResponse, pacer: LoopPacer | None = None) -> SSEBody:
    """Read an SSE body (see _read_events), then wait for the loop pacer's turn: what the caller
    does next (decoding the events, building the record) is a heavy step.

    A 200 that is not an event stream (a proxy's HTML page, a JSON error) is a TransientError
    naming its content type, and so is a stream without a single data line."""
    if resp.content_type != "text/event-stream":
        data = await resp.content.read(4096)
        raise TransientError(
            f"stream expected, got Content-Type {resp.content_type or 'none'}: {_sample(data)!r}", kind="content_type"
        )
    body = await _read_events(resp)
    if not body.events and not body.done:
        raise TransientError("the stream carried no data line", kind="no_data")
    if pacer is not None:
        await pacer.turn()
    return body


async def _read_events(resp: aiohttp.ClientResponse) -> SSEBody:
    """Read an SSE body up to ``data: [DONE]`` or the connection's end, stamping every event.

    An event's stamp is when the read that completed it reached user space (the connection's
    ArrivalStampingHandler), else when this coroutine got the bytes. The hot path does only what
    timing needs: one ``readany`` per wake-up, a split into lines; JSON is decoded after the
    stream ended (SSEBody.decoded). Blank separators, ``:`` comments and ``event:`` lines are
    skipped; a last event without its newline still counts.
    """
    content = resp.content
    proto = _arrival_handler(resp)
    arrivals: list[tuple[float, int]] | None = None
    if proto is not None:
        proto.watched, proto.arrivals = content, []
        arrivals = proto.arrivals
        if content.total_bytes:  # came with the headers, in the latest read or before
            arrivals.append((proto.last_rx, content.total_bytes))
    events: list[tuple[float, bytes]] = []
    pending = b""
    base = 0  # stream offset of the first byte of ``pending``
    seen = 0  # arrivals[seen] is the first that may complete the next line
    try:
        while True:
            data = await content.readany()
            now = time.perf_counter()
            if not data:
                if not pending:
                    break
                data = b"\n"  # the connection ended a last event without its newline
            lines = (pending + data).split(b"\n") if pending else data.split(b"\n")
            pending = lines.pop()
            end = base
            for line in lines:
                end += len(line) + 1
                if not line.startswith(b"data:"):
                    continue
                stamp = now
                if arrivals:
                    while seen < len(arrivals) - 1 and arrivals[seen][1] < end:
                        seen += 1
                    if arrivals[seen][1] >= end:
                        stamp = min(now, arrivals[seen][0])
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return SSEBody(events, stamp, done=True)
                if payload:
                    events.append((stamp, payload))
            base = end
        return SSEBody(events, now)
    finally:
        if proto is not None:
            proto.watched, proto.arrivals = None, []


# The engines' own families, and the Prometheus client's process RSS (vLLM's API server has it).
SERVER_METRIC_PREFIXES = ("vllm:", "tgi_", "sglang:", "llamacpp:", "process_resident_memory_bytes")


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of the serving engines' own metric families from Prometheus text format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(SERVER_METRIC_PREFIXES):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class HTTPBackend:
    """What every adapter shares: the target's one session, its base URL, JSON GETs."""

    name = "http"
    supports_ignore_eos = False  # vLLM, SGLang, llama-server honour ignore_eos; llama-cpp-python and TGI do not

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, model: str | None = None, *, pacer: LoopPacer | None = None
    ) -> None:
        # Credentials in the URL are split off here and sent as Basic auth: base_url, which ends
        # up in records, reports and error messages, never holds them.
        clean, credentials = split_credentials(base_url)
        self.auth = aiohttp.BasicAuth(*credentials) if credentials else None
        self.base_url = clean.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.session = session
        self.model = model
        # The run's one pacer, handed down by the driver (every target of a run shares it); an
        # adapter made on its own gets its own.
        self.pacer = pacer or LoopPacer()

    @contextlib.asynccontextmanager
    async def _post(self, path: str, body: dict[str, Any], stamps: Stamps) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a generation request, timed: the send is stamped, waits for the loop pacer's turn
        (building and sending is a heavy step; the wait is queue time), and the body's reaching the
        socket is stamped by the session's trace. Transport failures inside the block become
        TransientError (connection, payload, timeout) or FatalError (any other client error)."""
        stamps.mark_send()
        await self.pacer.turn()
        url = f"{self.base_url}{path}"
        try:
            while True:
                try:
                    resp = await self.session.post(url, json=body, trace_request_ctx=stamps, auth=self.auth)
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    if not stamps.reused or stamps.resends >= self._stale_bound():
                        raise
                    # A kept-alive connection the server had already closed: nothing came back
                    # (it disconnected, or the body could not even be written: "Can not write
                    # request body", seen with llama-server), so the request was not taken; sent
                    # again at once and timed from there. The pool may hand out another connection
                    # the server closed at the same time (llama-server closes idle ones together),
                    # so again while it is a kept-alive one, at most once per pooled connection.
                    stamps.mark_send()
                    stamps.t_wire = None
                    stamps.reused = False
                    stamps.resends += 1
            async with resp:
                yield resp
        except BackendError as exc:
            exc.resends = stamps.resends
            raise
        except TimeoutError as exc:
            raise _with_resends(TransientError(f"{type(exc).__name__}: {exc}", kind="timeout"), stamps) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _with_resends(TransientError(f"{type(exc).__name__}: {exc}", kind="connection"), stamps) from exc
        except aiohttp.ClientError as exc:
            raise _with_resends(FatalError(f"{type(exc).__name__}: {exc}"), stamps) from exc

    def _stale_bound(self) -> int:
        """The pool holds at most this many kept-alive connections, so at most this many can be stale."""
        pool = getattr(getattr(self.session, "connector", None), "limit", 0)
        return min(pool or MAX_STALE_RESENDS, MAX_STALE_RESENDS)

    async def close(self) -> None:
        """Close the shared session."""
        await self.session.close()

    async def _get_json(self, path: str) -> dict[str, Any]:
        try:
            async with self.session.get(f"{self.base_url}{path}", auth=self.auth) as resp:
                if resp.status != 200:
                    raise error_for_status(resp.status, await resp.text(errors="replace"))
                answer = await resp.json(content_type=None)
        except BackendError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TransientError(f"{self.base_url}{path}: {type(exc).__name__}: {exc}") from exc
        return answer if isinstance(answer, dict) else {"answer": answer}

    async def server_version(self) -> str | None:
        """The server's own version string, when it tells (for the report)."""
        return None

    async def scrape_metrics(self) -> dict[str, float] | None:
        """The server's Prometheus ``/metrics`` (vLLM ``vllm:*``, TGI ``tgi_*``), or None if it has none."""
        try:
            async with self.session.get(f"{self.base_url}/metrics", auth=self.auth) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError):
            return None
        return parse_prometheus(text)
