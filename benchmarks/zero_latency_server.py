"""A zero-latency OpenAI-compatible SSE server: streams N one-token chunks per request at once.

Runs in its own process so that the client under test has the event loop to itself.
Usage: python benchmarks/zero_latency_server.py PORT TOKENS
"""

from __future__ import annotations

import json
import sys

from aiohttp import web


def build_body(tokens: int) -> bytes:
    """The whole SSE reply, prebuilt: the server spends nothing per token."""
    parts = []
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    parts.append(role)
    for i in range(tokens):
        finish = "length" if i == tokens - 1 else None
        parts.append({"choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": finish}]})
    parts.append({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": tokens}})
    body = "".join(f"data: {json.dumps(p)}\n\n" for p in parts) + "data: [DONE]\n\n"
    return body.encode()


def main() -> None:
    port, tokens = int(sys.argv[1]), int(sys.argv[2])
    body = build_body(tokens)

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="text/event-stream")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "zero", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
