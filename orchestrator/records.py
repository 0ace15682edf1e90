"""What one request leaves on disk: typed records, their raw timings and every metric derived from them.

A record holds what was measured (the request as sent, the reply as received, the server's own
words, token counts by source, raw time offsets) and the verdict on it; every latency is a
property computed from the raw offsets, so a metric added later applies to old runs too. The
store writes ``to_json()`` and reads ``from_json()``; the keys of a record on disk are its field
names. Keys a record does not know (written by a newer version, or by a tool's own annotation)
are kept in ``extra`` and written back, so re-scoring a run never drops them.

``RECORD_SCHEMA`` is stored in run.json. Version 1 (runs before typed records) wrote the same keys,
only some of them not at all on one side (an error record had no ``timing``, an answered one no
``error_type``): missing keys read as their defaults. A run with a newer schema is refused, never
half read.
"""

from __future__ import annotations

import itertools
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NamedTuple, Self

# A stored logprobs position's flag (index 4): the entry stands for several tokens. llama-server
# reports a character made of several byte tokens as one entry holding its last token's
# probabilities, so its index is not its token's position (backends/logprobs.py, divergence.py).
LOGPROB_SPANS = 4

RECORD_SCHEMA = 2


def schema_of(meta: Any) -> int:
    """The record schema a run was written with (runs before it was recorded: 1); ``meta``:
    run.json's data or ``run_meta.RunMeta``."""
    return int(meta.get("record_schema", 1))


class Timing(NamedTuple):
    """Raw offsets of one request in seconds, from the moment its body reached the socket.

    ``wall_send`` is that moment on the wall clock (a clock shared across processes and runs);
    ``send_delay`` the client's own time before it (building the request, a busy loop), kept out
    of every latency; ``ttft`` the first content chunk (None when the reply was not streamed);
    ``chunks`` every content chunk's arrival; ``e2e`` the last byte.

    A named tuple, not a dataclass: immutable like a frozen one, but built in C (a report reads
    one per record, and a frozen dataclass's per-field ``object.__setattr__`` cost 3.6 µs each).
    """

    wall_send: float
    e2e: float
    ttft: float | None = None
    chunks: tuple[float, ...] = ()
    send_delay: float = 0.0

    @property
    def wall_end(self) -> float:
        """Wall-clock time of the reply's last byte."""
        return self.wall_send + self.e2e

    @property
    def itl(self) -> list[float]:
        """Gaps between consecutive content chunks (seconds)."""
        return [b - a for a, b in itertools.pairwise(self.chunks)]

    def tpot(self, output_tokens: int | None) -> float | None:
        """Time per output token after the first: (E2E - TTFT) / (tokens - 1)."""
        if self.ttft is None or output_tokens is None or output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        """The on-disk form (microsecond rounding is done when the stamps are taken)."""
        return {
            "wall_send": self.wall_send,
            "send_delay": self.send_delay,
            "ttft": self.ttft,
            "chunks": list(self.chunks),
            "e2e": self.e2e,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timing:
        """Read the on-disk form."""
        # JSON numbers as they are (floats, or ints where a stamp was whole): a report reads
        # hundreds of thousands of these, and per-value conversion was most of its time.
        get = data.get
        return cls(data["wall_send"], data["e2e"], get("ttft"), tuple(get("chunks") or ()), get("send_delay") or 0.0)


class ServerTiming(NamedTuple):
    """The server's own account of one request, in milliseconds (llama-server's ``timings``): its
    prompt processing (``prompt_tokens`` evaluated, ``cached_tokens`` reused from its cache) and
    its generation (``predicted_tokens`` decoded). Beside the client's stamps, it says where the
    time went: a TPOT the server's own per-token time explains is the server's; a TTFT far above
    the prompt's time is a wait in the server's queue."""

    prompt_tokens: int | None = None
    prompt_ms: float | None = None
    predicted_tokens: int | None = None
    predicted_ms: float | None = None
    cached_tokens: int | None = None

    @property
    def per_token_ms(self) -> float | None:
        """The server's generation time per decoded token."""
        if self.predicted_ms is None or not self.predicted_tokens:
            return None
        return self.predicted_ms / self.predicted_tokens

    def wait_ms(self, ttft: float | None) -> float | None:
        """The client's TTFT (seconds) minus the server's prompt time: the wait in the server
        before it took up the prompt (for a slot, behind other prompts), in milliseconds."""
        if ttft is None or self.prompt_ms is None:
            return None
        return ttft * 1000.0 - self.prompt_ms

    def to_json(self) -> dict[str, Any]:
        """The on-disk form."""
        return self._asdict()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerTiming:
        """Read the on-disk form (keys this version does not know are dropped)."""
        return cls(*(data.get(name) for name in cls._fields))

    @classmethod
    def from_llama_server(cls, timings: Any) -> ServerTiming | None:
        """llama-server's ``timings`` object (``prompt_n``, ``prompt_ms``, ``predicted_n``,
        ``predicted_ms``, ``cache_n``), or None when it is not one."""
        if not isinstance(timings, dict):
            return None
        values = [timings.get(k) for k in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "cache_n")]
        if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
            return None
        if values[1] is None and values[3] is None:
            return None
        return cls(*values)


@dataclass(frozen=True)
class _Layout:
    """A record class's on-disk keys, the ones a record cannot lack, and the defaults of the rest."""

    known: frozenset[str]
    required: frozenset[str]
    defaults: dict[str, Any]  # every default is immutable (None, 0, "", False) but extra's


_LAYOUTS: dict[type, _Layout] = {}


def _layout(cls: type) -> _Layout:
    """Built once per class: dataclasses.fields is slow per record."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        fs = [f for f in fields(cls) if f.name != "extra"]
        layout = _LAYOUTS[cls] = _Layout(
            known=frozenset(f.name for f in fs),
            required=frozenset(f.name for f in fs if f.default is MISSING),
            defaults={f.name: f.default for f in fs if f.default is not MISSING},
        )
    return layout


@dataclass(kw_only=True)
class Exchange:
    """What any request records: the body sent, how the reply ended, token counts, raw timing, error."""

    request: dict[str, Any] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Which source `completion_tokens` came from ("usage", "tokenizer", "chunks", ...), and the
    # count of every source that gave one, kept to report disagreement.
    token_source: str | None = None
    token_counts: dict[str, int] | None = None
    timing: Timing | None = None
    server_timing: ServerTiming | None = None  # the server's own per-request times, where it gives them
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """The reply arrived whole (an error record is never an answer)."""
        return self.error is None

    @property
    def timed(self) -> bool:
        """Answered, with raw timing to derive latencies from."""
        return self.error is None and self.timing is not None

    @property
    def ttft(self) -> float | None:
        """Time to first content token (seconds)."""
        return None if self.timing is None else self.timing.ttft

    @property
    def e2e(self) -> float | None:
        """Send to last byte (seconds)."""
        return None if self.timing is None else self.timing.e2e

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (seconds)."""
        return None if self.timing is None else self.timing.tpot(self.completion_tokens)

    @property
    def itl(self) -> list[float]:
        """Gaps between content chunks (seconds)."""
        return [] if self.timing is None else self.timing.itl

    def to_json(self) -> dict[str, Any]:
        """The on-disk form: every field by name, then the keys this version does not know."""
        # The instance's own dict, in field order (one record per request is written on the loop).
        out = dict(self.__dict__)
        extra = out.pop("extra")
        if self.timing is not None:
            out["timing"] = self.timing.to_json()
        if self.server_timing is not None:
            out["server_timing"] = self.server_timing.to_json()
        if extra:
            out.update((k, v) for k, v in extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Read the on-disk form; missing keys take their defaults, unknown ones go to ``extra``."""
        layout = _layout(cls)
        if not data.keys() >= layout.required:
            raise KeyError(f"record without {', '.join(sorted(layout.required - data.keys()))}")
        # Filled through its __dict__, in C: the generated __init__ matches some 35 keywords by
        # name, ~10 µs a record, which was most of a report's time over a few hundred thousand
        # records. (No __post_init__ exists to be skipped.)
        record = object.__new__(cls)
        state = record.__dict__
        state.update(layout.defaults)
        state.update(data)
        state["extra"] = {}
        if not layout.known.issuperset(data):
            for key in data.keys() - layout.known:
                state["extra"][key] = state.pop(key)
        if record.timing is not None:
            record.timing = Timing.from_json(record.timing)  # type: ignore[arg-type]  # its JSON until here
        if record.server_timing is not None:
            record.server_timing = ServerTiming.from_json(record.server_timing)  # type: ignore[arg-type]
        return record


@dataclass(kw_only=True)
class SampleRecord(Exchange):
    """One benchmark sample sent to one target: the exchange, and the verdict on its reply."""

    id: str
    task: str
    subject: str = ""
    prompt_digest: str = ""
    gold: Any = None
    target: str | None = None
    setup: str | None = None  # the setup version it was asked under, e.g. "qwen@2"
    replica: str | None = None  # the replica URL, for a target served by several
    reply: str | None = None
    raw: Any = None  # the server's own words (final chunks or the body)
    # When the run asked for them (`logprobs: k`): per generated token [token, logprob,
    # [[token, logprob(, id)], ...](, id(, spans))], the server's top alternatives and token ids
    # (backends/logprobs.py).
    logprobs: list[Any] | None = None
    extracted: str | None = None
    rule: str | None = None  # the extraction rule that fired, or "unparsed"
    correct: bool | None = None
    score_details: dict[str, Any] | None = None
    # An error's class: transient or fatal, the transport's kind (connection, timeout, http,
    # protocol...) and the HTTP status if there was one.
    error_kind: str | None = None
    error_type: str | None = None
    status: int | None = None
    attempts: int = 0  # every time the request was sent, at-once resends included
    resends: int = 0

    @property
    def broken_connection(self) -> bool:
        """Failed because the connection broke or timed out (the server may have died)."""
        return self.error is not None and self.error_type in ("connection", "timeout")


@dataclass(kw_only=True)
class LoadRecord(Exchange):
    """One request of a load-test level: the exchange and where it sat in the level."""

    index: int
    mode: str  # "concurrency" or a rate mode
    level: float
    warmup: bool = False
    cooldown: bool = False
    dispatch_lag: float | None = None  # a rate mode's lateness against its schedule (seconds)
    queued: float = 0.0  # waiting for a slot, a late loop, building the request (client-side)
    post: float | None = None  # from the reply's last byte to its slot being freed
    prompt_token_counts: dict[str, int] | None = None
    prompt_digest: str | None = None  # which prompt was sent (the text is not stored)

    @property
    def measured(self) -> bool:
        """Neither warm-up nor cool-down."""
        return not self.warmup and not self.cooldown


__all__ = [
    "LOGPROB_SPANS",
    "RECORD_SCHEMA",
    "Exchange",
    "LoadRecord",
    "SampleRecord",
    "ServerTiming",
    "Timing",
    "schema_of",
]
