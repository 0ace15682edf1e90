"""A small fake TGI whose every request and response is checked against TGI's OpenAPI document.

If TGI's schema changes (a field renamed, a required one added), these checks fail, and so do the
contract tests built on them. Behaviour is scripted per test (tokens to stream, errors to return).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from openapi_schema_validator import OAS30Validator


class OpenAPI:
    """Validators for the component schemas of an OpenAPI 3.0 document."""

    def __init__(self, path: Path) -> None:
        self.doc = json.loads(path.read_text(encoding="utf-8"))

    def validate(self, component: str, instance: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{component}", "components": self.doc["components"]}
        OAS30Validator(schema).validate(self._without_nullable_nones(component, instance))

    def _without_nullable_nones(self, component: str, instance: Any) -> Any:
        # OAS 3.0 marks e.g. StreamResponse.details as `nullable` beside an `allOf`; the validator
        # applies `nullable` only to a sibling `type`, so a null there (what TGI really sends for
        # every event but the last) would be refused. Drop exactly those nulls before validating.
        if not isinstance(instance, dict):
            return instance
        props = self.doc["components"]["schemas"][component].get("properties", {})
        return {k: v for k, v in instance.items() if not (v is None and props.get(k, {}).get("nullable"))}

    def response_schema(self, path: str, status: int) -> str:
        """Component name of a route's response (to prove the fake answers what the route declares)."""
        post = self.doc["paths"][path].get("post") or self.doc["paths"][path]["get"]
        content = post["responses"][str(status)]["content"]
        schema = next(iter(content.values()))["schema"]
        return str(schema["$ref"].rsplit("/", 1)[-1])


@dataclass
class FakeTGI:
    """Scripted TGI: ``tokens`` to generate, optional ``fail`` = (status, error_type) for the next N calls."""

    spec: OpenAPI
    tokens: list[str] = field(default_factory=lambda: ["The", " answer", " is", " B", "."])
    fail: list[tuple[int, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    input_length: int = 42
    max_top_n_tokens: int = 5  # TGI's launcher default (--max-top-n-tokens)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/generate_stream", self.generate_stream)
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)
        return app

    async def _request(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.spec.validate("GenerateRequest", body)  # our requests must match TGI's contract
        self.requests.append(body)
        return dict(body)

    def _error(self, route: str, status: int, error_type: str, stream: bool) -> web.Response:
        payload = {"error": f"scripted {error_type}", "error_type": error_type}
        self.spec.validate(self.spec.response_schema(route, status), payload)
        return web.json_response(payload, status=status)

    def _refused_top_n(self, route: str, body: dict[str, Any]) -> web.Response | None:
        asked = body["parameters"].get("top_n_tokens") or 0
        if asked <= self.max_top_n_tokens:
            return None
        # TGI's validation error for it (router/src/validation.rs).
        payload = {
            "error": f"`top_n_tokens` must be >= 0 and <= {self.max_top_n_tokens}. Given: {asked}",
            "error_type": "validation",
        }
        self.spec.validate(self.spec.response_schema(route, 422), payload)
        return web.json_response(payload, status=422)

    def _top(self, token: dict[str, Any], n: int) -> list[dict[str, Any]]:
        """The token and n - 1 less likely alternatives."""
        alts = [{"id": 900 + j, "text": f"alt{j}", "logprob": -3.0 - j, "special": False} for j in range(n - 1)]
        return [token, *alts][:n]

    def _tokens(self, n: int) -> list[dict[str, Any]]:
        out = [{"id": 100 + i, "text": t, "logprob": -0.1, "special": False} for i, t in enumerate(self.tokens[:n])]
        if len(out) < n:  # stopped: TGI streams the end-of-turn token as special
            out.append({"id": 2, "text": "<|im_end|>", "logprob": -0.01, "special": True})
        return out

    async def generate(self, request: web.Request) -> web.Response:
        body = await self._request(request)
        if self.fail:
            return self._error("/generate", *self.fail.pop(0), stream=False)
        if (refused := self._refused_top_n("/generate", body)) is not None:
            return refused
        n = body["parameters"]["max_new_tokens"]
        tokens = self._tokens(n)
        text = "".join(t["text"] for t in tokens if not t["special"])
        finish = "length" if len(self.tokens) >= n else "eos_token"
        payload = {
            "generated_text": text,
            "details": {"finish_reason": finish, "generated_tokens": len(tokens), "prefill": [], "tokens": tokens,
                        "seed": body["parameters"].get("seed")},
        }  # fmt: skip
        if top_n := body["parameters"].get("top_n_tokens"):
            payload["details"]["top_tokens"] = [self._top(t, top_n) for t in tokens]
        self.spec.validate(self.spec.response_schema("/generate", 200), payload)
        headers = {"x-prompt-tokens": str(self.input_length), "x-generated-tokens": str(len(tokens))}
        return web.json_response(payload, headers=headers)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self._request(request)
        if self.fail:
            return self._error("/generate_stream", *self.fail.pop(0), stream=True)
        if (refused := self._refused_top_n("/generate_stream", body)) is not None:
            return refused
        n = body["parameters"]["max_new_tokens"]
        tokens = self._tokens(n)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, token in enumerate(tokens):
            event: dict[str, Any] = {"index": i, "token": token, "generated_text": None, "details": None}
            if top_n := body["parameters"].get("top_n_tokens"):
                event["top_tokens"] = self._top(token, top_n)
            if i == len(tokens) - 1:
                event["generated_text"] = "".join(t["text"] for t in tokens if not t["special"])
                finish = "length" if len(self.tokens) >= n else "eos_token"
                event["details"] = {
                    "finish_reason": finish,
                    "generated_tokens": len(tokens),
                    "input_length": self.input_length,
                    "seed": body["parameters"].get("seed"),
                }
            self.spec.validate(self.spec.response_schema("/generate_stream", 200), event)
            await resp.write(f"data:{json.dumps(event)}\n\n".encode())
        await resp.write_eof()
        return resp

    async def info(self, request: web.Request) -> web.Response:
        payload = {
            "model_id": "Qwen/Qwen2-0.5B-Instruct", "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4, "max_input_tokens": 7168,
            "max_total_tokens": 8192, "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": "3.3.6", "sha": None, "docker_label": None,
        }  # fmt: skip
        self.spec.validate("Info", payload)
        return web.json_response(payload)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)
