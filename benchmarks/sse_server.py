"""A local OpenAI-compatible SSE server for client benchmarks, in its own process.

- zero latency (default): the whole reply is prebuilt and sent at once, N one-token chunks;
- ``--ttft-ms X --itl-ms Y``: waits X ms, then sends the N chunks Y ms apart, and reports its own
  perf_counter stamps (request received, each chunk written) in the final usage chunk, so a client
  can compare what it measured with what the server did. perf_counter is CLOCK_MONOTONIC on
  Linux, shared by every process on the machine; only durations are compared anyway.

Usage: python benchmarks/sse_server.py PORT TOKENS [--ttft-ms X --itl-ms Y]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web


def chunk(text: str | None, finish: str | None) -> bytes:
    delta = {"content": text} if text is not None else {"role": "assistant", "content": ""}
    payload = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


def build_body(tokens: int) -> bytes:
    """The whole zero-latency reply, prebuilt: the server spends nothing per token."""
    parts = [chunk(None, None)]
    parts += [chunk(" tok", "length" if i == tokens - 1 else None) for i in range(tokens)]
    usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": tokens}}
    parts.append(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return b"".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("tokens", type=int)
    ap.add_argument("--ttft-ms", type=float)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    args = ap.parse_args()
    body = build_body(args.tokens)

    async def zero(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="text/event-stream")

    async def paced(request: web.Request) -> web.StreamResponse:
        recv = time.perf_counter()
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(args.ttft_ms / 1000.0)
        stamps = []
        for i in range(args.tokens):
            if i:
                await asyncio.sleep(args.itl_ms / 1000.0)
            await resp.write(chunk(" tok", "length" if i == args.tokens - 1 else None))
            stamps.append(time.perf_counter())
        usage = {
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": args.tokens},
            "server_stamps": {"recv": recv, "chunks": stamps},
        }
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "bench", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", paced if args.ttft_ms is not None else zero)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
