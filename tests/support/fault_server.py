"""A fault-injecting server speaking OpenAI chat and TGI's native routes (fault injection only).

Its rule for a good reply is fixed: the answer is always "B", so the accuracy of what was
answered is known in advance. Faults are chosen per request by a hash of the prompt, and hit
only a prompt's first ``fail_attempts`` attempts: a retried request then gets a good reply, and a
persistent fault (``fail_attempts`` high) ends as an error record.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# mode -> error_type the client must record when the fault persists ("" = not a fault).
MODES = {
    "truncated": "truncated",
    "no_choices": "no_choices",
    "html": "content_type",
    "malformed": "malformed",
    "no_data": "no_data",
    "429": "http",
    "503": "http",
    "reset_before": "connection",
    "reset_mid": "connection",
    "stall": "timeout",
    "trickle": "",
}
ANSWER = "B"


def _chunk(content: str | None = None, finish: str | None = None, choices: bool = True) -> dict[str, Any]:
    if not choices:
        return {"object": "chat.completion.chunk", "choices": []}
    delta = {} if content is None else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@dataclass
class FaultServer:
    """``mode``: one fault, or ``mixed`` (each hit prompt gets a fault chosen by its hash)."""

    mode: str
    rate: float = 0.3
    fail_attempts: int = 1
    retry_after: str = "0"  # the 429's Retry-After: seconds, or "date:N" for an HTTP-date N s ahead
    stall_s: float = 5.0
    attempts: Counter[str] = field(default_factory=Counter)
    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    faults: Counter[str] = field(default_factory=Counter)
    hit: set[str] = field(default_factory=set)  # prompts that got a fault at least once
    notify_at: int = 0  # set `reached` once this many requests arrived
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)
        app.router.add_post("/generate", self.tgi)
        app.router.add_post("/generate_stream", self.tgi)
        return app

    # -- deciding ---------------------------------------------------------------------------
    def fault_for(self, key: str) -> str | None:
        """The fault this prompt gets on this attempt, if any (and count the attempt)."""
        self.attempts[key] += 1
        self.arrivals[key].append(time.monotonic())
        if self.notify_at and sum(self.attempts.values()) >= self.notify_at:
            self.reached.set()
        h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        if (h % 1000) >= self.rate * 1000 or self.attempts[key] > self.fail_attempts:
            return None
        mode = self.mode
        if mode == "mixed":
            names = sorted(MODES)
            mode = names[(h // 1000) % len(names)]
        self.faults[mode] += 1
        self.hit.add(key)
        return mode

    @staticmethod
    def key(body: dict[str, Any]) -> str:
        if "messages" in body:
            return json.dumps(body["messages"], sort_keys=True)
        return str(body["inputs"])

    # -- routes -----------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "faulty", "object": "model"}]})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_id": "faulty", "version": "3.3.6", "max_input_tokens": 30000})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _common(self, request: web.Request, mode: str, stream: bool) -> web.StreamResponse | None:
        """Faults that look the same on every protocol; None when the mode is protocol-specific."""
        if mode == "429":
            value = self.retry_after
            if value.startswith("date:"):
                value = email.utils.formatdate(time.time() + float(value[5:]), usegmt=True)
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": value})
        if mode == "503":
            return web.json_response({"error": "overloaded"}, status=503)
        if mode == "html":
            return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if mode == "reset_before":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if mode == "stall":
            await asyncio.sleep(self.stall_s)
            return None
        if mode == "malformed" and not stream:
            return web.Response(status=200, body=b'{"choices": [{"message": ', content_type="application/json")
        if mode == "truncated" and not stream:
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "400"})
            await resp.prepare(request)
            await resp.write(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "')
            assert request.transport is not None
            request.transport.abort()
            return resp
        return None

    async def _sse(self, request: web.Request, lines: list[str], abort: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for line in lines:
            await resp.write((line + "\n\n").encode())
            if self.mode == "trickle" or line.startswith(": trickle"):
                await asyncio.sleep(0.02)
        if abort:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = bool(body.get("stream"))
        mode = self.fault_for(self.key(body))
        if mode is not None:
            early = await self._common(request, mode, stream)
            if early is not None:
                return early
        if not stream:
            if mode == "no_choices":
                return web.json_response({"object": "chat.completion", "choices": []})
            message = {"role": "assistant", "content": ANSWER}
            usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
            return web.json_response(
                {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
            )
        good = [_chunk(""), _chunk(ANSWER), _chunk(None, "stop")]
        data = [f"data: {json.dumps(c)}" for c in good]
        if mode == "truncated":
            return await self._sse(request, data[:2])  # no finish reason, no [DONE]
        if mode == "no_choices":
            return await self._sse(request, [f"data: {json.dumps(_chunk(choices=False))}"] * 3 + ["data: [DONE]"])
        if mode == "malformed":
            return await self._sse(request, ['data: {"choices": [{"delta": {"content": "B"', "data: [DONE]"])
        if mode == "no_data":
            return await self._sse(request, [": keep-alive", ": keep-alive"])
        if mode == "reset_mid":
            return await self._sse(request, data[:2], abort=True)
        if mode == "trickle":
            return await self._sse(request, [": trickle", *data, "data: [DONE]"])
        return await self._sse(request, [*data, "data: [DONE]"])

    async def tgi(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = request.path == "/generate_stream"
        mode = self.fault_for(self.key(body))
        if mode is not None:
            early = await self._common(request, mode, stream)
            if early is not None:
                return early
        details = {"finish_reason": "eos_token", "generated_tokens": 1, "input_length": 9}
        if not stream:
            if mode == "no_choices":  # TGI's equivalent: a reply without generated_text
                return web.json_response({"details": details})
            return web.json_response({"generated_text": ANSWER, "details": details})
        token = {"id": 7, "text": ANSWER, "logprob": -0.1, "special": False}
        eos = {"id": 2, "text": "<|im_end|>", "logprob": -0.1, "special": True}
        events = [
            {"index": 1, "token": token, "generated_text": None, "details": None},
            {"index": 2, "token": eos, "generated_text": ANSWER, "details": details},
        ]
        data = [f"data: {json.dumps(e)}" for e in events]
        if mode in ("truncated", "no_choices"):
            return await self._sse(request, data[:1])  # the final event never comes
        if mode == "malformed":
            return await self._sse(request, ['data: {"token": {"id": 7, "text": "B"'])
        if mode == "no_data":
            return await self._sse(request, [": keep-alive"])
        if mode == "reset_mid":
            return await self._sse(request, data[:1], abort=True)
        if mode == "trickle":
            return await self._sse(request, [": trickle", *data])
        return await self._sse(request, data)
