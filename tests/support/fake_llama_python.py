"""A stand-in for ``launch.python`` that crashes like a miscompiled llama.cpp (fault injection only).

Called as the launcher calls a Python:
- ``-c CODE`` (the build check): prints a llama.cpp system-info line (``FAKE_LLAMA_BUILD``);
- ``-m llama_cpp.server --port N ...``: an OpenAI-compatible server answering "B" that, once it
  has answered ``FAKE_LLAMA_DIE_AFTER`` requests, kills itself with ``FAKE_LLAMA_SIGNAL`` (SIGILL
  by default) when the next request arrives, as the AMX kernels did; unset: never dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from aiohttp import web


def main() -> None:
    if sys.argv[1] == "-c":
        print(os.environ.get("FAKE_LLAMA_BUILD", "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "))
        return
    port = int(sys.argv[sys.argv.index("--port") + 1])
    die_after = int(os.environ.get("FAKE_LLAMA_DIE_AFTER", "-1"))
    sig = getattr(signal, os.environ.get("FAKE_LLAMA_SIGNAL", "SIGILL"))
    answered = 0

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake.gguf", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        nonlocal answered
        await request.read()
        if answered == die_after:
            print("fake llama.cpp: executing an instruction this CPU rejects", flush=True)
            os.kill(os.getpid(), sig)
        answered += 1
        await asyncio.sleep(0.005)
        return web.json_response(
            {
                "object": "chat.completion",
                "model": "fake.gguf",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    print(f"fake llama.cpp server on port {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
