"""What one request through the dispatch is made of: the events its answer arrives as, its context (what it
accumulates for its usage event, metrics and access-log line), the prepared call, and the trace it continues.
See ``inference.gateway.dispatch``."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol

import orjson

from core.redaction import Redactor
from inference.gateway.auth import KeyRecord
from inference.gateway.digests import ReplyDigest
from inference.gateway.errors import GatewayError
from inference.gateway.limits import Admission, PendingAdmission


class ClientGone(Exception):
    """The client disconnected before we could answer."""


# --- events ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Opened:
    stream: bool


@dataclass(slots=True)
class Delta:
    raw: bytes  # whole SSE events, each ending in a blank line
    events: int

    def chunks(self) -> list[dict]:
        """The events' JSON payloads (chat.completion.chunk or text_completion objects)."""
        return [orjson.loads(line[6:]) for line in self.raw.split(b"\n\n") if line.startswith(b"data: {")]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    raw: bytes | None = None  # the usage event (with its blank line), when the caller asked to see it


@dataclass(slots=True)
class Done:
    raw: bytes = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Answer:
    body: bytes


@dataclass(slots=True)
class Failed:
    error: GatewayError
    started: bool  # the answer had started (a stream failed midway)
    raw: bytes | None = None  # the replica's own error event, when it sent one


Event = Opened | Delta | Usage | Done | Answer | Failed


class Sink(Protocol):
    """Where ``Dispatcher.run`` sends the answer (the `/v1` HTTP adapter, the playground's socket, ...)."""

    async def delta(self, delta: Delta) -> None:
        """Whole content events, as the replica sent them: a stream's everyday step."""

    async def events(self, events: list[Event]) -> None:
        """Everything else, a read's worth at a time (``Opened`` and ``Answer`` come alone)."""


# --- one request -------------------------------------------------------------------------------------
class RequestContext:
    """What one request accumulates for its usage event, metrics and access-log line."""

    __slots__ = (
        "admission", "admitting", "backend", "client_disconnected", "completion_tokens", "conversation_id",
        "customer_id", "endpoint", "error_code", "key", "member", "model", "n", "payload", "prompt_sha256",
        "prompt_tokens", "prompt_upper", "redactions",
        "redactor", "reply", "request_id", "retain", "started", "started_wall", "status", "stream", "traceparent",
        "ttft_s", "upstream_s",
    )

    def __init__(self, endpoint: str, request_id: str) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.key: KeyRecord | None = None
        self.model = ""
        self.backend = ""
        self.status = 0
        self.error_code = ""
        self.stream = False
        self.client_disconnected = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft_s: float | None = None
        self.upstream_s = 0.0  # time spent waiting on the backend
        self.traceparent = ""
        self.payload: dict | None = None  # the body as sent upstream, to count a dropped stream's prompt
        self.n = 1  # choices asked for
        self.prompt_upper = 0  # the estimate reserved for the prompt (never below the true count)
        self.admission: Admission | None = None
        self.admitting: PendingAdmission | None = None  # the limits check, while it runs beside the upstream call
        # Replacements per type when the request was redacted (None: redaction off), for the usage event; and the
        # request's placeholders while the reply gets its originals back (restore mode only). Never logged.
        self.redactions: dict[str, int] | None = None
        self.redactor: Redactor | None = None
        # False: the caller keeps this request's content itself (the conversation API's turns), so the dispatch
        # doesn't capture it for transcript retention (``inference.gateway.transcripts``).
        self.retain = True
        # The playground's chat session and the console member who sent it, for the transcript record (its
        # history: ``inference.playground_history``); "" for /v1.
        self.conversation_id = ""
        self.member = ""
        # The access record (R-AUD-1, ``inference.gateway.digests``): the end customer named, the prompt's digest,
        # and the reply's, fed as the answer is relayed (None until one is).
        self.customer_id = ""
        self.prompt_sha256 = ""
        self.reply: ReplyDigest | None = None

    def overhead_s(self) -> float:
        return max(0.0, time.perf_counter() - self.started - self.upstream_s)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-request-id", self.request_id.encode()),
            (b"x-wattle-overhead-ms", f"{self.overhead_s() * 1000:.3f}".encode()),
        ]
        if self.admission is not None:
            headers += self.admission.headers
        return headers


class Call:
    """A prepared request: what ``Dispatcher.run`` sends, and the handle to cancel it."""

    __slots__ = ("_response", "body", "ctx", "forward_usage", "path")

    def __init__(self, ctx: RequestContext, body: bytes, path: str, forward_usage: bool) -> None:
        self.ctx = ctx
        self.body = body  # the bytes for the replica
        self.path = path
        self.forward_usage = forward_usage
        self._response = None

    def cancel(self) -> None:
        """The caller went away: hang up on the replica (vLLM aborts the request and stops generating)."""
        self.ctx.client_disconnected = True
        if self._response is not None:
            self._response.close()


# W3C Trace Context: version, trace id, parent id, flags, in lowercase hex; a later version may add fields.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
_TRACEPARENT_MAX_BYTES = 256


def traceparent(incoming: bytes | None, request_id: str) -> str:
    """Continue the caller's W3C trace, or start one whose trace id is our request id. Our span id is the
    request id's unique tail (no random draw per request). A header that isn't a valid traceparent is dropped,
    so what we log and forward is always one of ours in shape and length."""
    span = request_id[-16:]
    if incoming and len(incoming) <= _TRACEPARENT_MAX_BYTES:
        match = _TRACEPARENT.fullmatch(incoming.strip())
        if match is not None:
            version, trace_id, parent_id, flags, rest = match.groups()
            if (
                version != b"ff"
                and (version != b"00" or rest is None)
                and trace_id != b"0" * 32
                and parent_id != b"0" * 16
            ):
                return f"00-{trace_id.decode()}-{span}-{flags.decode()}"
    return f"00-{request_id[4:].ljust(32, '0')[:32]}-{span}-01"
