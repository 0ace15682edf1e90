"""TGI's native API: ``/generate`` and ``/generate_stream`` with the model's own chat template.

``parameters`` is always sent with ``do_sample: false`` (TGI samples when ``parameters`` is absent),
``details: true``, ``max_new_tokens``, ``stop`` and ``seed``. Token counts come from
``details.generated_tokens`` / ``input_length`` (stream) or the ``x-prompt-tokens`` /
``x-generated-tokens`` headers. Each stream event carries one token. ``error_type`` maps onto the
error tree: ``overloaded`` is transient (back off, retry), ``validation`` and the rest are fatal.

``/generate`` takes a prompt, not messages, so the chat is rendered here with the model's chat
template (``tokenizer_config.json`` / ``chat_template.jinja`` from the Hub or a local folder), in
the same Jinja environment transformers uses, so the prompt equals what a chat endpoint builds.
"""

from __future__ import annotations

import json
from pathlib import Path
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
from orchestrator.backends.http import HTTPBackend, read_json_body, read_sse, retry_after
from orchestrator.backends.logprobs import Position, from_tgi
from orchestrator.backends.tokens import TokenCounting
from orchestrator.timing import LoopPacer, Stamps


class ChatTemplate:
    """A model's chat template, rendered as transformers renders it."""

    def __init__(self, template: str, special: dict[str, Any]) -> None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(template)
        self.special = special

    @classmethod
    def from_config(cls, config: dict[str, Any], jinja_file: str | None = None) -> ChatTemplate:
        """From tokenizer_config.json's content (and chat_template.jinja, which wins when present)."""
        template: Any = jinja_file if jinja_file is not None else config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str):
            raise FatalError("the model has no chat template (tokenizer_config.json / chat_template.jinja)")

        def token(key: str) -> str | None:
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        special = {k: token(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(template, special)

    @classmethod
    def load(cls, source: str) -> ChatTemplate:
        """From a local folder, or a Hub id through huggingface_hub (cached)."""
        folder = Path(source)
        if folder.is_dir():
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            jinja = folder / "chat_template.jinja"
            return cls.from_config(config, jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        config = json.loads(Path(hf_hub_download(source, "tokenizer_config.json")).read_text(encoding="utf-8"))
        try:
            jinja_text = Path(hf_hub_download(source, "chat_template.jinja")).read_text(encoding="utf-8")
        except EntryNotFoundError:
            jinja_text = None
        return cls.from_config(config, jinja_text)

    def render(self, messages: tuple[tuple[str, str], ...], add_generation_prompt: bool = True) -> str:
        """The prompt text for a chat."""
        return str(
            self.template.render(
                messages=[{"role": r, "content": c} for r, c in messages],
                add_generation_prompt=add_generation_prompt,
                **self.special,
            )
        )


def error_from_tgi(status: int | None, body: Any) -> BackendError:
    """TGI's ErrorResponse ({error, error_type}) onto the error tree."""
    if isinstance(body, dict) and "error_type" in body:
        message = f"TGI {body.get('error_type')}: {str(body.get('error'))[:300]}"
        if body.get("error_type") == "overloaded":
            return TransientError(message, status)
        return FatalError(message, status)
    return error_for_status(status or 500, str(body))


class TGINative(HTTPBackend):
    """``/generate`` and ``/generate_stream`` on the target's shared session."""

    name = "tgi"

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        template: ChatTemplate,
        model: str | None = None,
        *,
        pacer: LoopPacer | None = None,
    ) -> None:
        super().__init__(base_url, session, model, pacer=pacer)
        self.template = template
        self._info: dict[str, Any] | None = None

    async def start(self) -> None:
        """Read /info (model id, limits, version)."""
        self._info = await self._get_json("/info")
        self.model = self.model or str(self._info.get("model_id"))

    async def describe(self) -> dict[str, Any]:
        """TGI's /info."""
        return {"info": self._info if self._info is not None else await self._get_json("/info")}

    async def server_version(self) -> str | None:
        """From /info."""
        info = self._info or {}
        return str(info["version"]) if "version" in info else None

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """GenerateRequest with explicit greedy parameters."""
        parameters: dict[str, Any] = {
            "do_sample": False,
            "details": True,
            "max_new_tokens": request.max_tokens,
            "seed": request.seed,
            "return_full_text": False,
            "decoder_input_details": False,
        }
        if request.stop:
            parameters["stop"] = list(request.stop)
        if request.logprobs > 0:
            # Each token's logprob is in the details already; its top alternatives are asked for.
            parameters["top_n_tokens"] = request.logprobs
        return {"inputs": self.template.render(request.messages), "parameters": parameters}

    async def generate(self, request: ChatRequest) -> Completion:
        """One request; stream or not as the request says."""
        body = self.build_body(request)
        stamps = Stamps()
        path = "/generate_stream" if request.stream else "/generate"
        async with self._post(path, body, stamps) as resp:
            if resp.status != 200:
                text = await resp.text(errors="replace")
                try:
                    error = error_from_tgi(resp.status, json.loads(text))
                except ValueError:
                    error = error_for_status(resp.status, text)
                error.retry_after = retry_after(resp.headers.get("Retry-After"))
                raise error
            if request.stream:
                completion = await self._read_stream(resp, stamps, body)
            else:
                completion = await self._read_body(resp, stamps, body)
        # TGI counts every reply itself (details, headers); the chunks are the estimate without.
        await TokenCounting().settle(completion)
        return completion

    async def _read_stream(self, resp: aiohttp.ClientResponse, stamps: Stamps, body: dict[str, Any]) -> Completion:
        parts: list[str] = []
        final: dict[str, Any] | None = None
        generated_text: str | None = None
        body_events = await read_sse(resp, self.pacer)
        positions: list[Position] | None = [] if body["parameters"].get("top_n_tokens") else None
        for stamp, event in body_events.decoded():
            if "error" in event:
                raise error_from_tgi(None, event)
            token = event.get("token") or {}
            if positions is not None and token:
                positions.append(from_tgi(token, event.get("top_tokens") or ()))
            # One token per event; special tokens (the end-of-turn marker) are not content.
            if token.get("text") and not token.get("special"):
                stamps.add_chunk(stamp)
                parts.append(token["text"])
            if event.get("details") is not None:
                final = event
            if event.get("generated_text") is not None:
                generated_text = event["generated_text"]
        if final is None and generated_text is None:
            # TGI's last event carries generated_text and details; a stream without it was cut.
            raise TransientError(
                f"stream truncated: it ended without TGI's final event after {len(parts)} tokens", kind="truncated"
            )
        stamps.t_end = body_events.t_end
        details = (final or {}).get("details") or {}
        # The server's own decode of the whole reply wins over concatenated token texts.
        text = generated_text if isinstance(generated_text, str) else "".join(parts)
        return Completion(
            text=text,
            finish_reason=details.get("finish_reason"),
            prompt_tokens=details.get("input_length"),
            completion_tokens=details.get("generated_tokens"),
            token_source="tgi-details" if "generated_tokens" in details else "none",
            stamps=stamps,
            request=body,
            raw={"final_event": final},
            logprobs=positions,
        )

    async def _read_body(self, resp: aiohttp.ClientResponse, stamps: Stamps, body: dict[str, Any]) -> Completion:
        payload = await read_json_body(resp, stamps)
        if isinstance(payload, list):  # TGI answers a list when given a list; we send one prompt
            payload = payload[0] if payload else {}
        if not isinstance(payload, dict) or "generated_text" not in payload:
            raise FatalError(f"unexpected reply shape: {json.dumps(payload)[:300]}", kind="bad_shape")
        details = payload.get("details") or {}
        header_prompt = resp.headers.get("x-prompt-tokens")
        header_generated = resp.headers.get("x-generated-tokens")
        generated = details.get("generated_tokens")
        positions = None
        if body["parameters"].get("top_n_tokens"):
            tops = details.get("top_tokens") or []
            positions = [
                from_tgi(tok, tops[i] if i < len(tops) else ()) for i, tok in enumerate(details.get("tokens") or ())
            ]
        source = "tgi-details"
        if generated is None and header_generated is not None:
            generated, source = int(header_generated), "tgi-headers"
        return Completion(
            text=payload["generated_text"],
            finish_reason=details.get("finish_reason"),
            prompt_tokens=int(header_prompt) if header_prompt is not None else None,
            completion_tokens=generated,
            token_source=source if generated is not None else "none",
            stamps=stamps,
            request=body,
            raw={"response": payload, "headers": {k: v for k, v in resp.headers.items() if k.startswith("x-")}},
            logprobs=positions,
        )
