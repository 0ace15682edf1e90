"""Token log-probabilities as the servers give them, in one compact form for the store.

Each generated token is one ``Position``: ``[token, logprob, [[token, logprob(, id)], ...](, id)]``,
the token the server chose (greedy: its top-1), its log-probability, and the server's top
alternatives at that position (the chosen token among them where the server includes it). Token
strings always (every server names them; the answer letter is found by its text), and token ids
where the server sends them (llama-server's ``id``, TGI's ``id``, vLLM's "token_id:N" tokens when
asked with ``return_tokens_as_token_ids``, the chosen token's text then read from its ``bytes``):
text is not an identity, since
llama-server shows a chosen piece of a multi-byte character as the finished character but the
same token among its alternatives as "\ufffd", and end-of-turn tokens as "". Two checkpoints of
one model share a vocabulary, so ids match across them. A position's alternatives are what the
server returned, so ``returned_k`` is the k a run really got (a server may cap what was asked).
A position may hold fewer: llama-cpp-python keys them by their detokenized text, so byte-fallback
pieces of one character collide into one entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Position = list[Any]  # [token, logprob, [[token, logprob(, id)], ...](, id(, spans))]

# Exact type checks, not isinstance against ABCs: this runs for every alternative of every token
# on the event loop (20 a token at k = 20), where an ABC check cost more than the rest together.
_NUMBERS = (float, int)


def _number(value: Any) -> float | None:
    return float(value) if value.__class__ in _NUMBERS else None


def _text(value: Any) -> str:
    return value if value.__class__ is str else "" if value is None else str(value)


_PLACEHOLDER = "token_id:"  # vLLM's token in place of its text, with return_tokens_as_token_ids


def _with_id(entry: list[Any], item: dict[str, Any]) -> list[Any]:
    """The entry with the server's token id appended, when it sent one (an int, not a bool)."""
    token_id = item.get("id")
    if token_id.__class__ is int:
        entry.append(token_id)
    elif entry[0].startswith(_PLACEHOLDER) and entry[0][len(_PLACEHOLDER) :].isdigit():
        entry.append(int(entry[0][len(_PLACEHOLDER) :]))
        # vLLM sends the chosen token's own text as bytes; an alternative's bytes spell the placeholder.
        raw = item.get("bytes")
        text = bytes(raw).decode("utf-8", errors="replace") if raw.__class__ is list else ""
        entry[0] = "" if text.startswith(_PLACEHOLDER) else text
    return entry


def _alternatives(items: Any, key: str) -> list[list[Any]]:
    """[[token, logprob(, id)], ...] of the well-formed entries of a server's top list."""
    out = []
    for alt in items or ():
        if alt.__class__ is dict:
            lp = alt.get("logprob")
            if lp.__class__ in _NUMBERS:
                out.append(_with_id([_text(alt.get(key)), lp], alt))
    return out


def _spans_tokens(item: dict[str, Any], position: Position) -> bool:
    """Whether an entry stands for several tokens: its bytes are longer than those its own token
    has among the alternatives (llama-server, at a character made of byte tokens)."""
    own = item.get("bytes")
    text = position[0]
    # Only a piece that completes a multi-byte character can: the common ASCII token costs one test
    # (this runs on the event loop for every generated token).
    if len(position) <= 3 or own.__class__ is not list or not text or text[-1] < "\x80":
        return False
    for alt in item.get("top_logprobs") or ():
        if alt.__class__ is dict and alt.get("id") == position[3] and alt.get("bytes").__class__ is list:
            return bool(len(alt["bytes"]) < len(own))
    return False


def from_openai(content: Iterable[Any]) -> list[Position]:
    """From an OpenAI chat ``logprobs.content`` list (vLLM, SGLang, llama.cpp, TGI's chat route)."""
    out = []
    for item in content:
        if item.__class__ is not dict:
            continue
        alts = _alternatives(item.get("top_logprobs"), "token")
        position = _with_id([_text(item.get("token")), _number(item.get("logprob")), alts], item)
        if _spans_tokens(item, position):
            position.append(1)
        out.append(position)
    return out


def from_tgi(token: dict[str, Any], top: Iterable[Any]) -> Position:
    """From one of TGI's ``Token`` objects and its ``top_tokens`` (native /generate routes)."""
    return _with_id([_text(token.get("text")), _number(token.get("logprob")), _alternatives(top, "text")], token)


def returned_k(positions: Iterable[Position]) -> int:
    """The most alternatives any position carried (0 when there are none): the k really got (a
    position with fewer lost some to collisions, not to a cap)."""
    return max((len(p[2]) for p in positions), default=0)


__all__ = ["Position", "from_openai", "from_tgi", "returned_k"]
