"""The backend Protocol, its request/reply types and the transport error tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.backends.logprobs import Position
from orchestrator.records import ServerTiming
from orchestrator.timing import Stamps


class BackendError(Exception):
    """A request that did not produce a whole reply. Never scored as a wrong answer.

    ``kind`` says what went wrong, for the record and the report: ``http`` (an error status),
    ``connection``, ``timeout``, ``truncated`` (a stream that ended before its end marker and
    finish reason), ``no_choices`` (a reply without any choice), ``no_data`` (a stream without a
    data line), ``content_type`` (e.g. an HTML page where JSON or SSE was due), ``malformed``
    (undecodable JSON), ``bad_shape`` (JSON of the wrong shape), ``server_error`` (an error event
    in the stream), ``client`` (any other client-side failure).
    """

    transient = False

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind or ("http" if status is not None else "client")
        # Seconds the server asked us to wait before retrying (Retry-After), if it did.
        self.retry_after: float | None = None
        self.resends = 0  # at-once resends after a closed kept-alive connection, before this failure


class TransientError(BackendError):
    """Worth retrying: connection refused/reset, timeout, 429, 502, 503, 504."""

    transient = True


class FatalError(BackendError):
    """Retrying cannot help: 4xx other than 429, malformed replies, other 5xx."""


TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


def error_for_status(status: int, body: str) -> BackendError:
    """Map an HTTP error status to the error tree."""
    message = f"HTTP {status}: {body[:300]}"
    if status in TRANSIENT_STATUS:
        return TransientError(message, status)
    return FatalError(message, status)


@dataclass(frozen=True)
class ChatRequest:
    """One greedy chat request, identical in meaning on every backend."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int
    seed: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    stream: bool = True
    # Load tests: generate exactly max_tokens (where the backend can), so lengths are as requested.
    ignore_eos: bool = False
    # > 0: the top-k log-probabilities of every generated token (greedy decoding is unchanged).
    logprobs: int = 0


@dataclass
class Completion:
    """A reply with everything needed to audit it later."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    token_source: str  # "usage" | "tokenizer" | "server-tokenize" | "chunks" | "none"
    stamps: Stamps
    request: dict[str, Any]  # the body as sent
    raw: dict[str, Any] = field(default_factory=dict)  # the server's own words (final chunks / body)
    # Output token counts by every source that gave one (usage, tgi-details, tokenizer, ...):
    # `completion_tokens` is the first of them; the others are kept to report disagreement.
    token_counts: dict[str, int] = field(default_factory=dict)
    # Asked for (request.logprobs > 0): per generated token [token, logprob, [[token, logprob], ...]]
    # with the server's top alternatives, compact (see backends/logprobs.py).
    logprobs: list[Position] | None = None
    # The server's own per-request times (llama-server's `timings`), where it gives them.
    server_timing: ServerTiming | None = None


class Backend(Protocol):
    """What the runner needs from a serving backend."""

    name: str
    supports_ignore_eos: bool
    model: str | None
    base_url: str

    async def start(self) -> None:
        """Discover what the server serves; raise BackendError when it is not usable."""
        ...

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The request body as it would be sent (recorded with every sample)."""
        ...

    async def server_version(self) -> str | None:
        """The server's version, when it says."""
        ...

    async def scrape_metrics(self) -> dict[str, float] | None:
        """The server's own Prometheus metrics, when it exposes them."""
        ...

    async def generate(self, request: ChatRequest) -> Completion:
        """Send one request; raise BackendError when there is no reply."""
        ...

    async def describe(self) -> dict[str, Any]:
        """The server's self-description (``/v1/models`` or ``/info``) for run.json."""
        ...

    async def close(self) -> None:
        """Release the shared session."""
        ...
