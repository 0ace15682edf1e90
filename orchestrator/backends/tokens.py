"""How an adapter settles a reply's output token count: one explicit strategy per target.

The server's own count (OpenAI ``usage``, TGI's ``details``) comes first. Then each source of the
strategy, in order: a *cross-check* source (the model's Hugging Face tokenizer: local and cheap)
counts every reply, so a disagreement with the server is on record; a *fallback* source (a
server's tokenize endpoint: one request each) counts only a reply nothing has counted yet. Last,
the number of content chunks, an estimate that is exact for servers streaming one token per event.
Every count is kept in ``Completion.token_counts`` by source; ``completion_tokens`` and
``token_source`` name the one that counts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends.base import Completion
from orchestrator.tokenizer import load_tokenizer

Count = Callable[[str], Awaitable[int | None]]


@dataclass(frozen=True)
class CountSource:
    """One way to count a reply's tokens: its name on record, the count, and when it runs."""

    name: str  # "tokenizer", "server-tokenize", ...
    count: Count  # None: could not count this reply
    cross_check: bool  # True: every reply; False: only a reply nothing counted yet


@dataclass(frozen=True)
class TokenCounting:
    """The sources a target's adapters count with, beyond the server's own figure."""

    sources: tuple[CountSource, ...] = ()

    def then(self, source: CountSource) -> TokenCounting:
        """This strategy with one more source after the others."""
        return TokenCounting((*self.sources, source))

    async def settle(self, completion: Completion) -> None:
        """Fill ``completion``'s token counts: the server's figure, each source's, or the chunk estimate."""
        if completion.completion_tokens is not None:
            completion.token_counts[completion.token_source] = completion.completion_tokens
        for source in self.sources:
            if completion.completion_tokens is not None and not source.cross_check:
                continue
            n = await source.count(completion.text)
            if n is None:
                continue
            completion.token_counts[source.name] = n
            if completion.completion_tokens is None:
                completion.completion_tokens, completion.token_source = n, source.name
        if completion.completion_tokens is None and completion.stamps.chunks:
            completion.completion_tokens, completion.token_source = len(completion.stamps.chunks), "chunks"


def hf_tokenizer_source(spec: str, resolve: Path | None = None) -> CountSource:
    """The model's own Hugging Face tokenizer (a local file/folder or a Hub id), as a cross-check."""
    tok = load_tokenizer(spec, resolve)

    async def count(text: str) -> int | None:
        return len(tok.encode(text, add_special_tokens=False).ids)

    return CountSource("tokenizer", count, cross_check=True)


__all__ = ["CountSource", "TokenCounting", "hf_tokenizer_source"]
