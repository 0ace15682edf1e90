"""OpenAI-compatible chat adapters (vLLM, llama.cpp, SGLang, TGI's chat route, any
/v1/chat/completions server), on the shared transport of orchestrator/backends/http.py."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from orchestrator.backends.base import (
    BackendError,
    ChatRequest,
    Completion,
    FatalError,
    TransientError,
    error_for_status,
)
from orchestrator.backends.http import (
    HTTPBackend,
    read_json_body,
    read_sse,
    retry_after,
)
from orchestrator.backends.logprobs import Position, from_openai
from orchestrator.backends.tokens import CountSource, TokenCounting
from orchestrator.records import ServerTiming
from orchestrator.timing import LoopPacer, Stamps


class OpenAIChat(HTTPBackend):
    """Chat completions over one shared aiohttp session."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        model: str | None = None,
        counting: TokenCounting | None = None,
        *,
        pacer: LoopPacer | None = None,
    ) -> None:
        super().__init__(base_url, session, model, pacer=pacer)
        self.counting = counting or TokenCounting()
        self._models_answer: dict[str, Any] | None = None

    # -- backend-specific knobs -------------------------------------------------------------
    def greedy_params(self, request: ChatRequest) -> dict[str, Any]:
        """Sampling parameters that make this server decode greedily and reproducibly."""
        return {"temperature": request.temperature, "top_p": 1.0, "seed": request.seed}

    # -- protocol -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Discover the served model id when the manifest does not pin one."""
        answer = await self._get_json("/v1/models")
        self._models_answer = answer
        if self.model is None:
            data = answer.get("data") or []
            if not data or not isinstance(data[0], dict) or "id" not in data[0]:
                raise FatalError(f"{self.base_url}/v1/models lists no model; set served_model in the manifest")
            self.model = str(data[0]["id"])

    async def describe(self) -> dict[str, Any]:
        """The `/v1/models` answer, as read at start."""
        if self._models_answer is None:
            self._models_answer = await self._get_json("/v1/models")
        return {"v1_models": self._models_answer}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for a request (recorded verbatim in the store)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            # max_tokens, not max_completion_tokens: llama.cpp ignores the latter.
            "max_tokens": request.max_tokens,
            "stream": request.stream,
            **self.greedy_params(request),
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        if request.ignore_eos and self.supports_ignore_eos:
            body["ignore_eos"] = True
            body["min_tokens"] = request.max_tokens
        if request.logprobs > 0:
            body["logprobs"] = True
            body["top_logprobs"] = request.logprobs
        return body

    async def generate(self, request: ChatRequest) -> Completion:
        """Send one chat request and time it."""
        body = self.build_body(request)
        stamps = Stamps()
        async with self._post("/v1/chat/completions", body, stamps) as resp:
            if resp.status != 200:
                error = error_for_status(resp.status, await resp.text(errors="replace"))
                error.retry_after = retry_after(resp.headers.get("Retry-After"))
                raise error
            if request.stream:
                completion = await self._read_stream(resp, stamps, body)
            else:
                completion = await self._read_body(resp, stamps, body)
        await self.counting.settle(completion)
        return completion

    # -- reading replies --------------------------------------------------------------------
    async def _read_stream(self, resp: aiohttp.ClientResponse, stamps: Stamps, body: dict[str, Any]) -> Completion:
        parts: list[str] = []
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        last_choice_chunk: dict[str, Any] | None = None
        usage_chunk: dict[str, Any] | None = None
        body_events = await read_sse(resp, self.pacer)
        any_choice = False
        positions: list[Position] | None = [] if body.get("logprobs") else None
        for stamp, chunk in body_events.decoded():
            if "error" in chunk:
                raise FatalError(f"server error in stream: {json.dumps(chunk['error'])[:300]}", kind="server_error")
            if chunk.get("usage"):
                usage = chunk["usage"]
                usage_chunk = chunk
            choices = chunk.get("choices") or ()
            any_choice = any_choice or bool(choices)
            for choice in choices:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    # Only chunks carrying text count: a role-only or empty chunk is not a token.
                    stamps.add_chunk(stamp)
                    parts.append(content)
                if positions is not None and (lp := choice.get("logprobs")):
                    positions += from_openai(lp.get("content") or ())
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
                    last_choice_chunk = chunk
        # A reply that never arrived whole is an error, never a (wrong) answer.
        if not any_choice:
            raise TransientError("the stream's chunks carried no choices", kind="no_choices")
        # Every whole reply ends with a finish reason; [DONE] alone is not enough: llama-cpp-python
        # ends a stream it interrupted (a newer request took the model) with [DONE] and no reason.
        if finish_reason is None:
            ended = "[DONE] without a finish reason" if body_events.done else "without [DONE] or a finish reason"
            raise TransientError(
                f"stream truncated: it ended {ended} after {len(parts)} content chunks", kind="truncated"
            )
        # A stream without [DONE] ends when the server closes the connection.
        stamps.t_end = body_events.t_end
        raw: dict[str, Any] = {"final_chunk": last_choice_chunk}
        if usage_chunk is not None and usage_chunk is not last_choice_chunk:
            raw["usage_chunk"] = usage_chunk
        completion = self._completion("".join(parts), finish_reason, usage, stamps, body, raw)
        completion.logprobs = positions
        # llama-server adds its own `timings` to the chunk that carries the usage.
        completion.server_timing = ServerTiming.from_llama_server(
            (usage_chunk or last_choice_chunk or {}).get("timings")
        )
        return completion

    async def _read_body(self, resp: aiohttp.ClientResponse, stamps: Stamps, body: dict[str, Any]) -> Completion:
        payload = await read_json_body(resp, stamps)
        if isinstance(payload, dict) and payload.get("choices") == []:
            raise TransientError("the reply carried no choices", kind="no_choices")
        try:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise FatalError(f"unexpected reply shape: {json.dumps(payload)[:300]}", kind="bad_shape") from exc
        completion = self._completion(text, choice.get("finish_reason"), payload.get("usage"), stamps, body, payload)
        if body.get("logprobs"):
            completion.logprobs = from_openai((choice.get("logprobs") or {}).get("content") or ())
        completion.server_timing = ServerTiming.from_llama_server(payload.get("timings"))
        return completion

    @staticmethod
    def _completion(
        text: str,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
        stamps: Stamps,
        body: dict[str, Any],
        raw: dict[str, Any],
    ) -> Completion:
        prompt_tokens = completion_tokens = None
        source = "none"
        if usage:
            prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
            if completion_tokens is not None:
                source = "usage"
        return Completion(text, finish_reason, prompt_tokens, completion_tokens, source, stamps, body, raw)


class VLLMChat(OpenAIChat):
    """vLLM's OpenAI server: usage arrives as a separate chunk with empty choices."""

    name = "vllm"
    supports_ignore_eos = True

    async def server_version(self) -> str | None:
        """vLLM answers GET /version."""
        try:
            return str((await self._get_json("/version")).get("version"))
        except BackendError:
            return None

    def greedy_params(self, request: ChatRequest) -> dict[str, Any]:
        """vLLM: temperature 0 is greedy; pin the other samplers to neutral values anyway."""
        return {**super().greedy_params(request), "top_k": -1, "repetition_penalty": 1.0}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """With logprobs, vLLM's tokens as ids ("token_id:N"): the KLD matches tokens by id."""
        body = super().build_body(request)
        if request.logprobs > 0:
            body["return_tokens_as_token_ids"] = True
        return body


class SGLangChat(OpenAIChat):
    """SGLang's OpenAI server (honours ignore_eos / min_tokens like vLLM)."""

    name = "sglang"
    supports_ignore_eos = True


class TGIChat(OpenAIChat):
    """TGI's OpenAI-compatible route; TGI serves one model, addressed as "tgi"."""

    name = "tgi-chat"

    async def start(self) -> None:
        """TGI's chat route takes the model name "tgi" whatever it serves."""
        self.model = self.model or "tgi"
        await super().start()

    async def describe(self) -> dict[str, Any]:
        """TGI's /info (model, limits, version)."""
        return {"info": await self._get_json("/info")}

    async def server_version(self) -> str | None:
        """From /info."""
        try:
            return str((await self._get_json("/info")).get("version"))
        except BackendError:
            return None


class LlamaCppChat(OpenAIChat):
    """llama.cpp's two servers, told apart at start: llama-cpp-python's (no stream usage, a
    repeat penalty of 1.1 by default, `/extras/tokenize/count`) and the C++ `llama-server`
    (answers `/props` with its build, counts with `/tokenize`, honours `ignore_eos`)."""

    name = "llamacpp"
    flavor = "llama-cpp-python"  # or "llama-server", once start() has asked

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        model: str | None = None,
        counting: TokenCounting | None = None,
        *,
        pacer: LoopPacer | None = None,
    ) -> None:
        # Its streams carry no usage: without the model's tokenizer, the GGUF's own counts the
        # reply, one request to the server each.
        server = CountSource("server-tokenize", self._server_count, cross_check=False)
        super().__init__(base_url, session, model, (counting or TokenCounting()).then(server), pacer=pacer)

        self._props: dict[str, Any] | None = None

    async def start(self) -> None:
        """The served model, and which of the two servers this is: only llama-server has /props."""
        await super().start()
        try:
            props = await self._get_json("/props")
        except BackendError:
            props = None  # llama-cpp-python: 404
        if props is not None and ("build_info" in props or "default_generation_settings" in props):
            self._props = props
            self.flavor = "llama-server"
            self.supports_ignore_eos = True  # a test request returned exactly max_tokens, finish "length"

    async def describe(self) -> dict[str, Any]:
        """`/v1/models`, and llama-server's `/props` (slots, context, build)."""
        found = await super().describe()
        if self._props is not None:
            found["props"] = self._props
        found["flavor"] = self.flavor
        return found

    async def server_version(self) -> str | None:
        """llama-server says its build (``b6123-0c1e5709``); llama-cpp-python says nothing (its
        launcher knows the version)."""
        build = (self._props or {}).get("build_info")
        return f"llama-server {build}" if build else None

    def greedy_params(self, request: ChatRequest) -> dict[str, Any]:
        """temperature 0 alone is not greedy here: the default repeat_penalty 1.1 changes logits."""
        return {**super().greedy_params(request), "repeat_penalty": 1.0, "top_k": 1}

    async def _server_count(self, text: str) -> int | None:
        """Count with the GGUF's own tokenizer through the server's tokenize endpoint: llama-server's
        `/tokenize` (no special tokens added: a reply's own tokens), or llama-cpp-python's
        `/extras/tokenize/count`."""
        if not text:
            return 0
        if self.flavor == "llama-server":
            answer = await self._post_json("/tokenize", {"content": text, "add_special": False})
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            return len(tokens) if isinstance(tokens, list) else None
        answer = await self._post_json("/extras/tokenize/count", {"input": text, "model": self.model})
        count = answer.get("count") if isinstance(answer, dict) else None
        return int(count) if isinstance(count, int) else None

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        """A side request's JSON answer, or None when it fails (a count is optional)."""
        try:
            async with self.session.post(f"{self.base_url}{path}", json=body, auth=self.auth) as resp:
                if resp.status != 200:
                    return None
                return await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
