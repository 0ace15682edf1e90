"""OpenAI-compatible adapter against a scripted server: SSE edge cases and error mapping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.backends import ChatRequest, FatalError, OpenAIChat, TransientError
from orchestrator.backends.http import make_session
from orchestrator.backends.openai import LlamaCppChat, VLLMChat
from orchestrator.backends.tokens import CountSource, TokenCounting
from tests.support.fake_openai import FakeOpenAI, Handler, chunk, sse

REQ = ChatRequest((("user", "Question?"),), max_tokens=5, seed=7)


async def _words(text: str) -> int:
    return len(text.split())


# A stand-in for the model's tokenizer: counts words, as a cross-check source.
WORDS = TokenCounting((CountSource("tokenizer", _words, cross_check=True),))

Serve = Callable[..., Awaitable[OpenAIChat]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TestServer] = []
    backends: list[OpenAIChat] = []

    async def start(handler: Handler, cls: type[OpenAIChat] = OpenAIChat, **kw: Any) -> OpenAIChat:
        fake = FakeOpenAI(handler)
        server = TestServer(fake.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        backend = cls(str(server.make_url("/")), make_session(4, 10.0), **kw)
        backend.fake = fake  # type: ignore[attr-defined]
        backends.append(backend)
        await backend.start()
        return backend

    yield start
    for b in backends:
        await b.close()
    for s in servers:
        await s.close()


async def test_comments_role_and_usage_chunks_are_not_tokens(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        usage = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}
        events: list[Any] = [": keep-alive", chunk(role=True), chunk(""), chunk("Hel"), ": ping", chunk("lo", "stop")]
        return await sse(request, [*events, usage])

    backend = await serve(handler)
    c = await backend.generate(REQ)
    assert c.text == "Hello"
    assert len(c.stamps.chunks) == 2  # role-only, empty and usage-only chunks are not tokens
    assert (c.prompt_tokens, c.completion_tokens, c.token_source) == (11, 2, "usage")
    assert c.finish_reason == "stop"
    rec = c.stamps.to_timing()
    assert rec.ttft is not None and 0 < rec.ttft == rec.chunks[0] <= rec.chunks[1] <= rec.e2e
    # Latencies start when the body reached the socket; the client's own delay before that is apart.
    assert c.stamps.t_wire is not None and c.stamps.t_wire >= c.stamps.t_send
    assert rec.send_delay == round(c.stamps.t_wire - c.stamps.t_send, 6)
    assert c.raw["usage_chunk"]["choices"] == []


async def test_usage_in_final_choice_chunk(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        final = chunk("x", "length") | {"usage": {"prompt_tokens": 3, "completion_tokens": 5}}
        return await sse(request, [chunk("abcd"), final])

    c = await (await serve(handler)).generate(REQ)
    assert (c.text, c.completion_tokens, c.token_source, c.finish_reason) == ("abcdx", 5, "usage", "length")
    assert "usage_chunk" not in c.raw


async def test_stream_without_done_and_without_usage(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [chunk("a"), chunk("b"), chunk("c", "length")], done=False)

    c = await (await serve(handler)).generate(REQ)
    assert c.text == "abc"
    assert (c.completion_tokens, c.token_source) == (3, "chunks")  # no tokenizer: an estimate, and said so


async def test_missing_usage_counted_with_tokenizer(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [chunk("one two three", "stop")])

    c = await (await serve(handler, counting=WORDS)).generate(REQ)
    assert (c.completion_tokens, c.token_source) == (3, "tokenizer")


async def test_request_body_is_greedy_with_explicit_max_tokens(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [chunk("B", "stop")])

    backend = await serve(handler, LlamaCppChat)
    await backend.generate(REQ)
    body = backend.fake.requests[-1]  # type: ignore[attr-defined]
    assert body["model"] == "fake-model"  # discovered from /v1/models
    assert body["max_tokens"] == 5 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.0 and body["seed"] == 7 and body["repeat_penalty"] == 1.0
    assert body["stream_options"] == {"include_usage": True}

    pinned = await serve(handler, VLLMChat, model="pinned")
    await pinned.generate(REQ)
    assert pinned.fake.requests[-1]["model"] == "pinned"  # type: ignore[attr-defined]


async def test_non_streaming(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert body["stream"] is False and "stream_options" not in body
        return web.json_response(
            {
                "choices": [{"message": {"role": "assistant", "content": "C"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 1},
            }
        )

    c = await (await serve(handler)).generate(ChatRequest((("user", "q"),), 5, 1, stream=False))
    assert (c.text, c.completion_tokens, c.stamps.t_first) == ("C", 1, None)
    assert c.logprobs is None and "logprobs" not in c.request and "top_logprobs" not in c.request


async def test_non_streaming_logprobs(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["temperature"] == 0.0
        top = [{"token": "C", "logprob": -0.1, "bytes": [67]}, {"token": "D", "logprob": -2.5, "bytes": [68]}]
        logprobs = {"content": [{"token": "C", "logprob": -0.1, "bytes": [67], "top_logprobs": top}]}
        choice = {"message": {"role": "assistant", "content": "C"}, "finish_reason": "stop", "logprobs": logprobs}
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": 4, "completion_tokens": 1}})

    c = await (await serve(handler)).generate(ChatRequest((("user", "q"),), 5, 1, stream=False, logprobs=2))
    assert c.logprobs == [["C", -0.1, [["C", -0.1], ["D", -2.5]]]]


@pytest.mark.parametrize(("status", "kind"), [(429, TransientError), (503, TransientError), (400, FatalError)])
async def test_status_mapping(serve: Serve, status: int, kind: type[Exception]) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": {"message": "no"}}, status=status)

    with pytest.raises(kind) as info:
        await (await serve(handler)).generate(REQ)
    assert info.value.status == status  # type: ignore[attr-defined]


async def test_error_event_in_stream_and_malformed_json(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [chunk("a"), {"error": {"message": "boom"}}])

    with pytest.raises(FatalError, match="boom"):
        await (await serve(handler)).generate(REQ)

    async def broken(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, ["data: {not json"])

    # A garbled event may be a proxy's or the network's doing: worth another try.
    with pytest.raises(TransientError, match="malformed") as caught:
        await (await serve(broken)).generate(REQ)
    assert caught.value.kind == "malformed"


async def test_connection_dropped_mid_stream_is_transient(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(("data: " + json.dumps(chunk("a")) + "\n\n").encode())
        assert request.transport is not None
        request.transport.close()  # abort mid-body
        return resp

    with pytest.raises(TransientError):
        await (await serve(handler)).generate(REQ)


async def test_connection_refused_is_transient() -> None:
    backend = OpenAIChat("http://127.0.0.1:9", make_session(1, 5.0), model="m")
    try:
        with pytest.raises(TransientError):
            await backend.generate(REQ)
    finally:
        await backend.close()


async def test_usage_cross_checked_with_tokenizer(serve: Serve) -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        return await sse(request, [chunk("one two three", "stop"), usage])

    c = await (await serve(handler, counting=WORDS)).generate(REQ)
    assert (c.completion_tokens, c.token_source) == (4, "usage")  # the server's figure stays primary
    assert c.token_counts == {"usage": 4, "tokenizer": 3}  # and the disagreement is on record


class ClosingKeepAlive:
    """Raw HTTP/1.1 server: its first connection answers one request and keeps alive, then
    closes without a word when a second request comes on it (a server's idle timeout racing the
    client's reuse); later connections answer normally."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _read_request(self, conn: Any) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            part = conn.recv(65536)
            if not part:
                return False
            data += part
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")) if k.lower() == b"content-length"
        )
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def _serve(self) -> None:
        payload = json.dumps({"choices": [{"index": 0, "message": {"content": "B"}, "finish_reason": "stop"}]}).encode()
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(payload),
            payload,
        )
        while True:
            conn, _ = self.listener.accept()
            self.connections += 1
            first = self.connections == 1
            with conn:
                while self._read_request(conn):
                    self.requests += 1
                    if first and self.requests == 2:
                        break  # close: the client had sent on a connection it thought alive
                    conn.sendall(answer)


async def test_a_post_on_a_connection_the_server_closed_is_sent_again_once() -> None:
    server = ClosingKeepAlive()
    backend = OpenAIChat(server.url, make_session(1, 10.0), model="m")
    request = ChatRequest((("user", "Q"),), max_tokens=2, seed=1, stream=False)
    try:
        first = await backend.generate(request)
        second = await backend.generate(request)  # reuses the kept-alive connection, which closes
    finally:
        await backend.close()
    assert first.text == second.text == "B"
    assert server.requests == 3 and server.connections == 2


async def test_token_counting_strategy_order() -> None:
    from orchestrator.backends import Completion
    from orchestrator.timing import Stamps

    asked: list[str] = []

    async def server(text: str) -> int | None:
        asked.append(text)
        return None if text == "unknown" else 7

    fallback = CountSource("server-tokenize", server, cross_check=False)

    def reply(text: str, usage: int | None, chunks: int) -> Completion:
        stamps = Stamps(chunks=[0.0] * chunks)
        return Completion(text, "stop", None, usage, "usage" if usage is not None else "none", stamps, {})

    # The server's figure stays primary; the cross-check counts beside it; the fallback is not asked.
    c = reply("a b c", 4, 3)
    await WORDS.then(fallback).settle(c)
    assert (c.completion_tokens, c.token_source, c.token_counts) == (4, "usage", {"usage": 4, "tokenizer": 3})
    assert asked == []
    # Nothing counted it: the fallback does, one request.
    c = reply("a b c", None, 3)
    await TokenCounting().then(fallback).settle(c)
    assert (c.completion_tokens, c.token_source, c.token_counts) == (7, "server-tokenize", {"server-tokenize": 7})
    assert asked == ["a b c"]
    # The fallback could not: the chunk estimate, named as such.
    c = reply("unknown", None, 2)
    await TokenCounting().then(fallback).settle(c)
    assert (c.completion_tokens, c.token_source, c.token_counts) == (2, "chunks", {})
    # Nothing at all (an empty, unstreamed reply): no count, and no pretended one.
    c = reply("", None, 0)
    await TokenCounting().settle(c)
    assert (c.completion_tokens, c.token_source) == (None, "none")


class FakeLlamaServer(FakeOpenAI):
    """The C++ llama-server's extra routes: /props (its build) and /tokenize."""

    tokenized: list[str]

    def app(self) -> web.Application:
        app = super().app()
        self.tokenized = []

        async def props(request: web.Request) -> web.Response:
            return web.json_response({"build_info": "b6900-0c1e5709", "total_slots": 4,
                                      "default_generation_settings": {"n_ctx": 4096}})  # fmt: skip

        async def tokenize(request: web.Request) -> web.Response:
            body = await request.json()
            self.tokenized.append(body["content"])
            assert body["add_special"] is False
            return web.json_response({"tokens": list(range(len(body["content"].split())))})

        app.router.add_get("/props", props)
        app.router.add_post("/tokenize", tokenize)
        return app


async def test_llama_server_is_told_from_llama_cpp_python() -> None:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [chunk(role=True), chunk("one two three", "length")])  # no usage

    fake = FakeLlamaServer(handler)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    backend = LlamaCppChat(str(server.make_url("/")), make_session(4, 10.0))
    try:
        await backend.start()
        assert backend.flavor == "llama-server" and backend.supports_ignore_eos
        assert await backend.server_version() == "llama-server b6900-0c1e5709"
        assert (await backend.describe())["props"]["total_slots"] == 4
        c = await backend.generate(ChatRequest((("user", "q"),), max_tokens=3, seed=1, ignore_eos=True))
        # Counted by its own /tokenize (llama-cpp-python's /extras/tokenize/count is a 404 there).
        assert (c.completion_tokens, c.token_source) == (3, "server-tokenize") and fake.tokenized == ["one two three"]
        assert fake.requests[-1]["ignore_eos"] is True and fake.requests[-1]["repeat_penalty"] == 1.0
    finally:
        await backend.close()
        await server.close()


async def test_llama_cpp_python_stays_itself(serve: Serve) -> None:
    backend = await serve(lambda request, body: sse(request, [chunk("B", "stop")]), LlamaCppChat)
    assert backend.flavor == "llama-cpp-python" and not backend.supports_ignore_eos  # type: ignore[attr-defined]
    assert await backend.server_version() is None
    await backend.generate(ChatRequest((("user", "q"),), max_tokens=3, seed=1, ignore_eos=True))
    assert "ignore_eos" not in backend.fake.requests[-1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("done", [True, False])
async def test_a_stream_without_a_finish_reason_is_an_error_even_after_done(serve: Serve, done: bool) -> None:
    # llama-cpp-python ends a stream it interrupted for a newer request with [DONE] and no reason:
    # the reply never arrived whole, so it is an error to retry, not an (empty) answer.
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await sse(request, [chunk(role=True), chunk("The answ")], done=done)

    backend = await serve(handler)
    with pytest.raises(TransientError, match="stream truncated") as caught:
        await backend.generate(REQ)
    assert caught.value.kind == "truncated" and ("[DONE] without a finish reason" in str(caught.value)) == done
