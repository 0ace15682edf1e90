"""A scriptable OpenAI-compatible server for protocol edge cases and fault injection only.

It never stands in for the real servers of the integration tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def sse(request: web.Request, events: list[str | dict[str, Any]], done: bool = True) -> web.StreamResponse:
    """Stream events: dicts become ``data: {json}``, strings are written as raw lines."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for ev in events:
        line = ev if isinstance(ev, str) else f"data: {json.dumps(ev)}"
        await resp.write((line + "\n\n").encode())
    if done:
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@dataclass
class FakeOpenAI:
    """Per-test behaviour in ``handler``; counts requests and the peak of in-flight ones."""

    handler: Handler
    model: str = "fake-model"
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    healthy_at: float = 0.0  # loop time from which /health answers 200 (503 before)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        ready = asyncio.get_running_loop().time() >= self.healthy_at
        return web.Response(status=200 if ready else 503)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self.handler(request, body)
        finally:
            self.in_flight -= 1


async def answer_b(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """A well-behaved streaming server that always answers "B" (usage as a separate chunk)."""
    await asyncio.sleep(0.01)
    usage = {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1}}
    return await sse(request, [chunk(role=True, content=""), chunk("B", "stop"), usage])
