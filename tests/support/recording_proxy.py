"""A reverse proxy on loopback that records the JSON body of every request it forwards.

Two clients pointed at one server through it can be compared on what they really sent (not on
what each says it sent). Responses, streamed ones included, are passed through chunk by chunk.
It runs its own event loop in a thread, so synchronous tests and subprocess clients can use it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.servers import free_port


class RecordingProxy:
    """Forward everything to ``upstream``; ``requests`` holds (path, JSON body) in arrival order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, Any]] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if body:
            try:
                self.requests.append((request.path, json.loads(body)))
            except ValueError:
                self.requests.append((request.path, None))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as up:
            kept = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", "retry-after")}
            response = web.StreamResponse(status=up.status, headers=kept)
            await response.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except aiohttp.ClientConnectionResetError:
                pass  # the client stopped reading (it had its answer): its choice, not a proxy failure
            return response

    async def _start(self) -> None:
        # A fresh upstream connection per request: a kept-alive one the server closed meanwhile
        # (llama-server drops idle ones) would fail the forward with a 500 the client never caused.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), connector=aiohttp.TCPConnector(force_close=True)
        )
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def chats(self, since: int = 0) -> list[dict[str, Any]]:
        """The chat-completion bodies recorded from position ``since`` on."""
        return [b for path, b in self.requests[since:] if path.endswith("/chat/completions") and isinstance(b, dict)]
