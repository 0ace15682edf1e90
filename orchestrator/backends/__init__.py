"""Serving backends behind one Protocol; see :mod:`orchestrator.backends.base`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from orchestrator.backends.base import (
    Backend,
    BackendError,
    ChatRequest,
    Completion,
    FatalError,
    TransientError,
)
from orchestrator.backends.http import make_session
from orchestrator.backends.openai import LlamaCppChat, OpenAIChat, SGLangChat, TGIChat, VLLMChat
from orchestrator.backends.tgi import ChatTemplate, TGINative
from orchestrator.backends.tokens import TokenCounting, hf_tokenizer_source
from orchestrator.manifest import ClientConfig, TargetConfig
from orchestrator.timing import LoopPacer

__all__ = [
    "Backend",
    "BackendError",
    "ChatRequest",
    "Completion",
    "FatalError",
    "OpenAIChat",
    "TGINative",
    "TransientError",
    "open_backends",
]


async def open_backends(
    target: TargetConfig, urls: list[str], client: ClientConfig, tokenizer: Path | None, pacer: LoopPacer | None = None
) -> list[Backend]:
    """One adapter per replica URL of a target, all on the target's one shared session."""
    api_key = os.environ.get(target.api_key_env) if target.api_key_env else None
    counting = TokenCounting()
    if target.tokenizer is not None and target.backend != "tgi":
        counting = counting.then(await asyncio.to_thread(hf_tokenizer_source, target.tokenizer, tokenizer))
    template = None
    if target.backend == "tgi":
        source = str(tokenizer) if tokenizer is not None else (target.tokenizer or target.model_id)
        if source is None:
            raise FatalError(f"{target.name}: backend tgi renders the chat template: set model_id or tokenizer")
        template = await asyncio.to_thread(ChatTemplate.load, source)
    session = make_session(client.concurrency, client.request_timeout, api_key)
    backends: list[Backend] = []
    for url in urls:
        if template is not None:
            backends.append(TGINative(url, session, template, model=target.served_model, pacer=pacer))
        else:
            cls = {"vllm": VLLMChat, "llamacpp": LlamaCppChat, "tgi-chat": TGIChat, "sglang": SGLangChat}.get(
                target.backend, OpenAIChat
            )
            backends.append(cls(url, session, model=target.served_model, counting=counting, pacer=pacer))
    try:
        for backend in backends:
            await backend.start()
    except BaseException:
        await session.close()
        raise
    return backends
