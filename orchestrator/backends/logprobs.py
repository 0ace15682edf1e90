"""Token log-probabilities as the servers give them, in one compact form for the store.

Each generated token is one ``Position``: ``[token, logprob, [[token, logprob], ...]]``, the
token the server chose (greedy: its top-1), its log-probability, and the server's top
alternatives at that position (the chosen token among them where the server includes it). Token
strings, not ids: every server names them, and two checkpoints of one model share a vocabulary.
A position's alternatives are what the server returned, so ``returned_k`` is the k a run really
got (a server may cap what was asked). A position may hold fewer: llama-cpp-python keys them by
their detokenized text, so byte-fallback pieces of one character collide into one entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Position = list[Any]  # [token, logprob, [[token, logprob], ...]]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def from_openai(content: Iterable[Any]) -> list[Position]:
    """From an OpenAI chat ``logprobs.content`` list (vLLM, SGLang, llama.cpp, TGI's chat route)."""
    out: list[Position] = []
    for item in content:
        if not isinstance(item, Mapping):
            continue
        top = [
            [str(alt.get("token", "")), lp]
            for alt in item.get("top_logprobs") or ()
            if isinstance(alt, Mapping) and (lp := _number(alt.get("logprob"))) is not None
        ]
        out.append([str(item.get("token", "")), _number(item.get("logprob")), top])
    return out


def from_tgi(token: Mapping[str, Any], top: Iterable[Any]) -> Position:
    """From one of TGI's ``Token`` objects and its ``top_tokens`` (native /generate routes)."""
    alternatives = [
        [str(t.get("text", "")), lp]
        for t in top
        if isinstance(t, Mapping) and (lp := _number(t.get("logprob"))) is not None
    ]
    return [str(token.get("text", "")), _number(token.get("logprob")), alternatives]


def returned_k(positions: Iterable[Position]) -> int:
    """The most alternatives any position carried (0 when there are none): the k really got (a
    position with fewer lost some to collisions, not to a cap)."""
    return max((len(p[2]) for p in positions), default=0)


__all__ = ["Position", "from_openai", "from_tgi", "returned_k"]
