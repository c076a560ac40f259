"""The contract between the planes: every record one plane writes to Redis and the other reads, with its Redis
key. The control plane encodes them after its database commits; the data plane decodes them on its request
path (with an in-process cache), and writes usage events back. This file is the only place either side learns
a record's shape.

Each record carries ``v``, the contract's version, and so does its Redis key: during a rolling deploy the old and
the new code each read and write their own generation and never misread the other's. New code finds no
snapshot marker of its own version, asks for a rebuild and reads what the rebuild writes. (Until the old control
plane is gone, a change it makes reaches only old gateways, and the other way round: deploy both planes in one
go.)

- ``KeyRecord`` at ``apikey:<key id>``: one API key (hashes, scopes, models, expiry, its own limits).
- ``TenantRecord`` at ``tenant:<tenant id>``: one organisation (status, effective limits, when it stops being
  served for want of payment). Apart from its keys' records, so a plan or tenant change republishes only the
  tenants it touches.
- ``BackendRecord`` list at ``backends``; model prices at ``prices``: the platform's, and each plan's own as a
  price list that tenant records name.
- ``UsageEvent``: one JSON line per request, in entries of the ``INFERENCE_USAGE_STREAM`` stream (and, the same
  line, the access log).
- ``TranscriptRecord``: one request's or conversation turn's content (prompt and reply), in entries of the
  ``transcripts:v<version>`` stream, only for a tenant whose ``retention_days`` is above 0. The control plane's
  ingest encrypts it and stores it (``audit.transcripts``); nothing else reads it.
- Conversations (the conversation API): an open conversation's state at ``conversation:v<version>:<id>`` (the data
  plane's alone); ``ClosedConversation`` in entries of the ``conversations:closed:v<version>`` stream, and
  ``EscalationDecision`` (automated decisions, digests only) in entries of ``adm:decisions:v<version>``, for the
  control plane.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from core import ccaas
from core.redis import key

VERSION = 1


class RecordError(ValueError):
    """Bytes that aren't a record of this version of the contract."""


def _load(raw: bytes | str, *, unversioned_ok: bool = False) -> dict:
    """``unversioned_ok``: a record from before versions (same shape as version 1) is read as version 1."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v", VERSION if unversioned_ok else None) != VERSION:
        raise RecordError(f"not a version {VERSION} record")
    return data


# --- Redis keys ------------------------------------------------------------------------------------
def api_key_record_key(key_id: str) -> str:
    return key("apikey", f"v{VERSION}", key_id)


def tenant_record_key(tenant_id: str) -> str:
    return key("tenant", f"v{VERSION}", tenant_id)


def snapshot_ready_key() -> str:
    """Present while every key and tenant record of this version is published (gone after a Redis data loss,
    and absent for a new version until a rebuild has written its records)."""
    return key("snapshot", "ready", f"v{VERSION}")


def snapshot_reconciled_key() -> str:
    """When the last reconciliation ran (ISO 8601): the next republishes what changed since."""
    return key("snapshot", "reconciled", f"v{VERSION}")


def backends_key() -> str:
    return key("backends", f"v{VERSION}")


def prices_key() -> str:
    return key("prices", f"v{VERSION}")


def backend_health_key(name: str) -> str:
    """A backend's live state as the data plane sees it (JSON written by each gateway worker after its probes,
    ``BackendPool.health_record``; the control plane's probe fills in only when none has), read by the staff
    console and by the forms and pages that list the served models (``inference.selectors``)."""
    return key("backend_health", name)


def transcript_stream_key() -> str:
    """The stream of ``TranscriptRecord``s (content: never logged, never spooled to disk)."""
    return key("transcripts", f"v{VERSION}")


def usage_epoch_key() -> str:
    """Set by data-plane workers; its absence tells them Redis lost its data (and unconfirmed events)."""
    return key("usage", "epoch")


# --- records ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    hash: str  # HMAC-SHA256 of the secret under the pepper (hex)
    scopes: tuple[str, ...]
    models: tuple[str, ...] = ()  # empty: every model
    expires: float | None = None  # epoch seconds
    revoked: bool = False
    # During a rotation's grace period the previous secret works until ``prev_expires`` (epoch seconds).
    prev_hash: str | None = None
    prev_expires: float | None = None
    limits: dict[str, int] = field(default_factory=dict)  # the key's own, by kind (``core.quotas.for_data_plane``)

    def encode(self) -> bytes:
        return orjson.dumps({"v": VERSION, **asdict(self)})

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyRecord:
        data = _load(raw)
        try:
            return cls(
                key_id=data["key_id"], tenant=data["tenant"], hash=data["hash"],
                scopes=tuple(data.get("scopes") or ()), models=tuple(data.get("models") or ()),
                expires=data.get("expires"), revoked=bool(data.get("revoked")),
                prev_hash=data.get("prev_hash") or None, prev_expires=data.get("prev_expires"),
                limits=dict(data.get("limits") or {}),
            )
        except KeyError as exc:
            raise RecordError(f"key record without {exc}") from None


_REDACTION_MODES = frozenset({"off", "redact", "restore"})  # ``core.redaction.MODES``


@dataclass(frozen=True, slots=True)
class TenantRecord:
    tenant: str
    status: str  # "active", "suspended", "closed"
    limits: dict[str, int] = field(default_factory=dict)  # effective, by kind; empty: nothing limited
    # Epoch seconds from which the tenant is refused for want of payment (its subscription's grace period ends,
    # or 0: refused now); None: nothing to pay, or paid. The data plane compares it with its clock per request,
    # so a grace period ends on time without a republish. Records from before this field read as None.
    unpaid_after: float | None = None
    # The price list that prices the tenant's usage against its spend cap: a key of the prices record's
    # ``lists`` (its plan's), falling back to the platform prices for a model the list lacks or a list that isn't
    # published. None (and records from before this field): the platform prices.
    price_list: str | None = None
    # Personal-information redaction on its requests (``core.redaction``): "off", "redact" or "restore". Records
    # from before this field, or with a mode this code doesn't know, read as "off" (a request's own
    # ``x-wattle-redact`` header still asks for it).
    redaction: str = "off"
    # Transcript retention (``audit`` retention): days the tenant's content is kept, encrypted; 0: off (content is
    # never stored). Records from before this field read as 0.
    retention_days: int = 0
    # Conversation API and playground customer mode (``core.ccaas``): the escalation rule, the sentiment scorer
    # ("lexicon", or "embedding" with ``sentiment_model``) and the percentage of closed conversations that get
    # post-call analytics. Records from before these fields read as the defaults.
    escalation_threshold: float = ccaas.DEFAULT_ESCALATION_THRESHOLD
    escalation_turns: int = ccaas.DEFAULT_ESCALATION_TURNS
    escalation_phrases: tuple[str, ...] = ccaas.DEFAULT_ESCALATION_PHRASES
    sentiment_scorer: str = "lexicon"
    sentiment_model: str = ""
    analytics_sample: int = ccaas.DEFAULT_ANALYTICS_SAMPLE_PERCENT

    def encode(self) -> bytes:
        return orjson.dumps({"v": VERSION, **asdict(self)})

    @classmethod
    def decode(cls, raw: bytes | str) -> TenantRecord:
        data = _load(raw)
        try:
            unpaid_after = data.get("unpaid_after")
            price_list = data.get("price_list")
            if price_list is not None and not isinstance(price_list, str):
                raise TypeError
            redaction = data.get("redaction")
            return cls(tenant=data["tenant"], status=data["status"], limits=dict(data.get("limits") or {}),
                       redaction=redaction if redaction in _REDACTION_MODES else "off",
                       unpaid_after=float(unpaid_after) if unpaid_after is not None else None,
                       price_list=price_list or None, **_conversation_fields(data))
        except KeyError as exc:
            raise RecordError(f"tenant record without {exc}") from None
        except (TypeError, ValueError):
            raise RecordError("tenant record with a malformed unpaid_after or price_list") from None


def _conversation_fields(data: dict) -> dict[str, Any]:
    """The retention and conversation settings of a tenant record; a field that is missing (an older record) or
    malformed (a newer one) reads as its default, as redaction does."""
    out: dict[str, Any] = {}
    days = data.get("retention_days")
    if isinstance(days, int) and not isinstance(days, bool) and days >= 0:
        out["retention_days"] = days
    threshold = data.get("escalation_threshold")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and -1.0 <= threshold <= 1.0:
        out["escalation_threshold"] = float(threshold)
    turns = data.get("escalation_turns")
    if isinstance(turns, int) and not isinstance(turns, bool) and turns >= 0:
        out["escalation_turns"] = turns
    phrases = data.get("escalation_phrases")
    if isinstance(phrases, list) and all(isinstance(p, str) for p in phrases):
        out["escalation_phrases"] = tuple(phrases)
    scorer = data.get("sentiment_scorer")
    if scorer in ccaas.SENTIMENT_SCORERS:
        out["sentiment_scorer"] = scorer
    model = data.get("sentiment_model")
    if isinstance(model, str):
        out["sentiment_model"] = model
    sample = data.get("analytics_sample")
    if isinstance(sample, int) and not isinstance(sample, bool) and 0 <= sample <= 100:
        out["analytics_sample"] = sample
    return out


@dataclass(frozen=True, slots=True)
class BackendRecord:
    name: str
    url: str  # without a trailing slash
    api_key: str = ""
    models: tuple[str, ...] = ()
    region: str = ""
    weight: int = 100
    max_concurrency: int = 256
    enabled: bool = True
    draining: bool = False


def encode_backends(backends: list[BackendRecord]) -> bytes:
    return orjson.dumps({"v": VERSION, "backends": [asdict(b) for b in backends]})


def decode_backends(raw: bytes | str) -> list[BackendRecord]:
    names = {f.name for f in fields(BackendRecord)}
    try:
        loaded = orjson.loads(raw)
        # A bare list is what came before versions (the same items): read it while a rolling deploy runs.
        items = loaded if isinstance(loaded, list) else _load(raw)["backends"]
        return [
            BackendRecord(**{k: (tuple(v or ()) if k == "models" else v) for k, v in item.items() if k in names})
            for item in items
        ]
    except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise RecordError(f"malformed backend list: {exc}") from None


Prices = dict[str, tuple[float, float]]


def encode_prices(prices: Prices, lists: dict[str, Prices] | None = None) -> bytes:
    """Model → (input, output) price in micro-AUD per token: the platform's, and per price list (a plan's own
    prices, by the name tenant records carry in ``price_list``) only the models the list prices itself. Readers
    from before the lists read ``prices`` alone."""
    record: dict[str, Any] = {"v": VERSION, "prices": _price_table(prices)}
    if lists:
        record["lists"] = {name: _price_table(table) for name, table in lists.items()}
    return orjson.dumps(record)


def _price_table(prices: Prices) -> dict[str, list[float]]:
    return {model: [float(pair[0]), float(pair[1])] for model, pair in prices.items()}


def _read_price_table(table: Any) -> Prices:
    return {str(model): (float(pair[0]), float(pair[1])) for model, pair in table.items()}


def decode_price_lists(raw: bytes | str) -> tuple[Prices, dict[str, Prices]]:
    """The platform prices and the price lists, each list already merged over the platform prices (a model it
    doesn't price costs the platform price), so a reader finds a tenant's price in two dictionary lookups."""
    try:
        loaded = orjson.loads(raw)
        if isinstance(loaded, dict) and loaded.get("v") == VERSION:
            default, lists = _read_price_table(loaded["prices"]), loaded.get("lists", {})
        else:
            # Before versions the prices were the bare mapping: read it while a rolling deploy runs.
            if isinstance(loaded, dict) and "v" in loaded:
                raise RecordError(f"not a version {VERSION} record")
            default, lists = _read_price_table(loaded), {}
        return default, {str(name): {**default, **_read_price_table(table)} for name, table in lists.items()}
    except RecordError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise RecordError(f"malformed prices: {exc}") from None


def decode_prices(raw: bytes | str) -> Prices:
    """The platform prices alone."""
    return decode_price_lists(raw)[0]


@dataclass(slots=True)
class UsageEvent:
    """One request that reached a tenant, as the data plane saw it. Billing stores the first fields; the rest
    serve the access log, which writes the very same line."""

    request_id: str
    tenant: str | None
    status: int
    created: float  # epoch seconds: when the request started
    key_id: str | None = None
    endpoint: str = ""
    model: str = ""
    backend: str = ""
    error_code: str = ""
    stream: bool = False
    client_disconnected: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    # The access log's own:
    time: float = 0.0
    overhead_ms: float = 0.0
    traceparent: str = ""
    # Replacements per identifier type when the request was redacted (``{}``: redacted, nothing found); None:
    # redaction was off. Counts only, never a value. Events from before this field read as None.
    redactions: dict[str, int] | None = None
    # The access record's own (R-AUD-1, docs/audit.md): the end customer the tenant named (``user`` or
    # ``x-wattle-customer-id``; "" if none), and SHA-256 digests (lowercase hex, "" if none) of the prompt as
    # received and of the reply as the replica returned it. Never the text. Events from before these read as "".
    customer_id: str = ""
    prompt_sha256: str = ""
    reply_sha256: str = ""
    logger: str = "wattle.access"
    v: int = VERSION

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson encodes a dataclass natively, in its field order

    @classmethod
    def decode(cls, raw: bytes | str) -> UsageEvent:
        data = _load(raw, unversioned_ok=True)  # events spooled or streamed before versions: the same shape
        names = _USAGE_FIELDS
        try:
            event = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise RecordError(f"malformed usage event: {exc}") from None
        if not isinstance(event.request_id, str) or not event.request_id or event.tenant is None:
            raise RecordError("a usage event names its request and tenant")
        if event.customer_id and not valid_customer_id(event.customer_id):
            raise RecordError("a usage event with a malformed customer id")
        if not (_digest_or_empty(event.prompt_sha256) and _digest_or_empty(event.reply_sha256)):
            raise RecordError("a usage event with a malformed digest")
        return event

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_USAGE_FIELDS = frozenset(f.name for f in fields(UsageEvent))
_HEX = frozenset("0123456789abcdef")



def valid_customer_id(value: object) -> bool:
    """Whether ``value`` may be stored as an end-customer id (what the tenant calls its customer: an account
    number, a CRM id, ...): ``core.ccaas``'s rule, the one the conversation API and individuals' requests use, so
    every stored id can be the subject of a request (1 to 64 letters, digits or ``. _ : @ + -``)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        return ccaas.context(customer_id=value).customer_id == value
    except ccaas.Invalid:
        return False


def _digest_or_empty(value: object) -> bool:
    return value == "" or (isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value))


def encode_usage_event(request_id: str, tenant: str | None, status: int, created: float, key_id: str | None,
                       endpoint: str, model: str, backend: str, error_code: str, stream: bool,
                       client_disconnected: bool, prompt_tokens: int, completion_tokens: int, ttft_ms: float | None,
                       duration_ms: float, time: float, overhead_ms: float, traceparent: str,
                       redactions: dict[str, int] | None = None, customer_id: str = "", prompt_sha256: str = "",
                       reply_sha256: str = "") -> bytes:
    """``UsageEvent(...).encode()`` for the data plane's hot path, in half the time (no instance, positional
    arguments); a test keeps its keys those of ``UsageEvent``."""
    return orjson.dumps({
        "request_id": request_id, "tenant": tenant, "status": status, "created": created, "key_id": key_id,
        "endpoint": endpoint, "model": model, "backend": backend, "error_code": error_code, "stream": stream,
        "client_disconnected": client_disconnected, "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens, "ttft_ms": ttft_ms, "duration_ms": duration_ms, "time": time,
        "overhead_ms": overhead_ms, "traceparent": traceparent, "redactions": redactions,
        "customer_id": customer_id, "prompt_sha256": prompt_sha256, "reply_sha256": reply_sha256,
        "logger": "wattle.access", "v": VERSION,
    })


# --- transcripts (R-RET) ---------------------------------------------------------------------------
TRANSCRIPT_KINDS = frozenset({"request", "conversation_turn"})
MAX_CONVERSATION_ID_CHARS = 128
MAX_TRANSCRIPT_MEMBER_CHARS = 64  # a console user's primary key as text
# Retention is bounded (7 years, a day either side of leap years): ``tenants.Tenant.retention_days``'s maximum.
MAX_RETENTION_DAYS = 2557


@dataclass(frozen=True, slots=True)
class TranscriptRecord:
    """One request's content, or one conversation turn's, as it left the data plane for retention.

    ``prompt`` is the endpoint's prompt field as it was sent to the replica (chat ``messages``, completions
    ``prompt``): after redaction when the tenant's mode (or the request) asked for it, so a redacted request is kept
    with its placeholders, never the originals. ``reply`` is the text the replica generated, choices one after the
    other (a stream's pieces joined), before restore mode put originals back; partial if the stream ended early.
    ``retention_days`` is the tenant's setting when the request was made: the row expires that many days after
    ``created``. ``turn`` tells a conversation's turns apart when they share a request id (0 for a plain request);
    the ingest stores ``(request_id, turn)`` once. ``member``: the console user's id when a tenant member sent it
    from the playground (whose history it is; "" otherwise, and in records written before the field existed).
    """

    tenant: str
    request_id: str
    created: float  # epoch seconds
    retention_days: int
    prompt: Any  # JSON: a list of chat messages, or a completion prompt (text or texts)
    reply: str
    kind: str = "request"  # or "conversation_turn"
    key_id: str = ""
    customer_id: str = ""  # the end customer the tenant named ("" if none)
    model: str = ""
    endpoint: str = ""  # "chat.completions", "completions", or the conversation API's
    conversation_id: str = ""
    turn: int = 0
    status: int = 200
    member: str = ""
    v: int = VERSION

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson encodes a dataclass natively (a tenth of asdict's cost)

    @classmethod
    def decode(cls, raw: bytes | str) -> TranscriptRecord:
        data = _load(raw)
        names = _TRANSCRIPT_FIELDS
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise RecordError(f"malformed transcript record: {exc}") from None
        if not (isinstance(record.tenant, str) and record.tenant and isinstance(record.request_id, str)
                and 0 < len(record.request_id) <= 128):
            raise RecordError("a transcript record names its tenant and request")
        if record.kind not in TRANSCRIPT_KINDS:
            raise RecordError("a transcript record of an unknown kind")
        if (not isinstance(record.retention_days, int) or isinstance(record.retention_days, bool)
                or not 0 < record.retention_days <= MAX_RETENTION_DAYS):
            raise RecordError("a transcript record with a retention outside 1..MAX_RETENTION_DAYS")
        if not isinstance(record.created, (int, float)) or not isinstance(record.reply, str):
            raise RecordError("a transcript record with a malformed created or reply")
        if record.customer_id and not valid_customer_id(record.customer_id):
            raise RecordError("a transcript record with a malformed customer id")
        if not isinstance(record.conversation_id, str) or len(record.conversation_id) > MAX_CONVERSATION_ID_CHARS:
            raise RecordError("a transcript record with a malformed conversation id")
        if not isinstance(record.turn, int) or record.turn < 0:
            raise RecordError("a transcript record with a malformed turn")
        if not isinstance(record.member, str) or len(record.member) > MAX_TRANSCRIPT_MEMBER_CHARS:
            raise RecordError("a transcript record with a malformed member")
        return record


_TRANSCRIPT_FIELDS = frozenset(f.name for f in fields(TranscriptRecord))


# --- conversations (the conversation API, docs/conversations.md) -----------------------------------
def conversation_key(conversation_id: str) -> str:
    """An open conversation's state (the data plane's own JSON, ``inference.gateway.conversations``), with an idle
    TTL. Its id is unguessable and the state names its tenant: a read by another tenant is refused as unknown."""
    return key("conversation", f"v{VERSION}", conversation_id)


def conversation_lock_key(conversation_id: str) -> str:
    """Held while one turn of the conversation runs, so two turns at once are taken one after the other."""
    return key("conversation", "lock", f"v{VERSION}", conversation_id)


def conversations_closed_stream_key() -> str:
    """The stream of ``ClosedConversation``s, one per closed conversation (content: never logged). The control
    plane ingests it (stored conversation, post-call analytics)."""
    return key("conversations", "closed", f"v{VERSION}")


def adm_decisions_stream_key() -> str:
    """The stream of ``EscalationDecision``s: automated decisions the data plane made, for the audit chain (ADM)."""
    return key("adm", "decisions", f"v{VERSION}")


CONVERSATION_ROLES = frozenset({"user", "assistant"})
ESCALATION_REASONS = frozenset({"", "trigger_phrase", "negative_sentiment"})


@dataclass(frozen=True, slots=True)
class ConversationTurn:
    """One turn as stored: ``role`` "user" (the customer) or "assistant" (the model's reply); ``text`` as stored
    (with placeholders where redaction was on: never the identifiers the tenant asked to redact); ``time`` epoch
    seconds; a customer turn's ``sentiment`` score in [-1, 1] and ``label`` (None and "" on a reply); a reply's
    ``request_id`` (its usage record)."""

    role: str
    text: str
    time: float
    sentiment: float | None = None
    label: str = ""
    request_id: str = ""
    # A customer turn's escalation decision inputs (``EscalationDecision.inputs_sha256``), kept for every turn
    # whether it escalated or not; "" on a reply.
    inputs_sha256: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> ConversationTurn:
        turn = cls(role=data["role"], text=data["text"], time=float(data["time"]), sentiment=data.get("sentiment"),
                   label=data.get("label") or "", request_id=data.get("request_id") or "",
                   inputs_sha256=data.get("inputs_sha256") or "")
        if turn.role not in CONVERSATION_ROLES or not isinstance(turn.text, str):
            raise RecordError("a conversation turn with an unknown role or no text")
        if turn.sentiment is not None and not (isinstance(turn.sentiment, (int, float)) and -1 <= turn.sentiment <= 1):
            raise RecordError("a conversation turn with a sentiment outside [-1, 1]")
        return turn


@dataclass(frozen=True, slots=True)
class ClosedConversation:
    """A conversation as it was when closed, on ``conversations_closed_stream_key()`` for the control plane.

    ``turns`` oldest first. ``escalated`` with ``escalation_reason`` ("trigger_phrase" or "negative_sentiment"),
    ``escalation_detail`` (the tenant's phrase that matched, or the run of negative turns: never customer text),
    ``escalated_at`` (epoch seconds) and ``escalation_turn`` (index in ``turns`` of the customer turn that fired).
    ``redaction``: the mode its turns were stored under ("off", "redact", "restore"). ``scorer``: the sentiment
    scorer the tenant had configured. ``metadata``: the caller's small JSON object from the first turn."""

    conversation_id: str
    tenant: str
    key_id: str
    model: str
    channel: str
    language: str
    opened: float
    closed: float
    turns: tuple[ConversationTurn, ...] = ()
    customer_id: str = ""
    escalated: bool = False
    escalation_reason: str = ""
    escalation_detail: str = ""
    escalated_at: float | None = None
    escalation_turn: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    redaction: str = "off"
    scorer: str = "lexicon"

    def encode(self) -> bytes:
        return orjson.dumps({"v": VERSION, **asdict(self)})

    @classmethod
    def decode(cls, raw: bytes | str) -> ClosedConversation:
        data = _load(raw)
        try:
            record = cls(
                conversation_id=data["conversation_id"], tenant=data["tenant"], key_id=data["key_id"],
                model=data["model"], channel=data["channel"], language=data["language"],
                opened=float(data["opened"]), closed=float(data["closed"]),
                turns=tuple(ConversationTurn.from_dict(t) for t in data.get("turns") or ()),
                customer_id=data.get("customer_id") or "", escalated=bool(data.get("escalated")),
                escalation_reason=data.get("escalation_reason") or "",
                escalation_detail=data.get("escalation_detail") or "",
                escalated_at=data.get("escalated_at"), escalation_turn=data.get("escalation_turn"),
                metadata=dict(data.get("metadata") or {}), redaction=data.get("redaction") or "off",
                scorer=data.get("scorer") or "lexicon",
            )
        except KeyError as exc:
            raise RecordError(f"closed conversation without {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise RecordError(f"malformed closed conversation: {exc.__class__.__name__}") from None
        if not (isinstance(record.conversation_id, str)
                and 0 < len(record.conversation_id) <= MAX_CONVERSATION_ID_CHARS
                and isinstance(record.tenant, str) and record.tenant):
            raise RecordError("a closed conversation names itself and its tenant")
        if record.channel not in ccaas.CHANNELS:
            raise RecordError("a closed conversation on an unknown channel")
        if record.customer_id and not valid_customer_id(record.customer_id):
            raise RecordError("a closed conversation with a malformed customer id")
        if record.escalation_reason not in ESCALATION_REASONS or record.escalated != bool(record.escalation_reason):
            raise RecordError("a closed conversation with an inconsistent escalation")
        if record.escalation_turn is not None and not (
                isinstance(record.escalation_turn, int) and 0 <= record.escalation_turn < len(record.turns)):
            raise RecordError("a closed conversation whose escalation turn isn't one of its turns")
        return record


@dataclass(frozen=True, slots=True)
class EscalationDecision:
    """One automated escalation decision (ADM, privacy policy APP 1.7-1.9), on ``adm_decisions_stream_key()`` for
    the audit chain: its inputs by SHA-256 digest (lowercase hex) and its outcome, never the text.

    ``text_sha256``: the customer turn the rule decided on (UTF-8, as stored: redacted where redaction was on).
    ``rule_sha256``: the tenant's rule (``core.sentiment.EscalationRule.digest``). ``inputs_sha256``: the canonical
    JSON of every input the decision read, the turns the rule looked at included (``core.sentiment``'s
    ``decision_inputs_digest``). ``scorer``: the scorer that produced ``score``/``label`` (``fallback`` says why it
    wasn't the configured one, if so). ``turn``: the customer turn's index in the conversation."""

    decision_id: str  # unique: the audit entry is written once per decision
    tenant: str
    conversation_id: str
    key_id: str
    time: float
    turn: int
    escalate: bool
    reason: str
    text_sha256: str
    rule_sha256: str
    inputs_sha256: str
    scorer: str
    score: float
    label: str
    fallback: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"v": VERSION, **asdict(self)})

    @classmethod
    def decode(cls, raw: bytes | str) -> EscalationDecision:
        data = _load(raw)
        try:
            record = cls(**{k: data[k] for k in _DECISION_REQUIRED}, fallback=data.get("fallback") or "")
        except KeyError as exc:
            raise RecordError(f"escalation decision without {exc}") from None
        if not (isinstance(record.decision_id, str) and 0 < len(record.decision_id) <= 128
                and isinstance(record.tenant, str) and record.tenant):
            raise RecordError("an escalation decision names itself and its tenant")
        if not all(isinstance(d, str) and len(d) == 64 and _HEX.issuperset(d)
                   for d in (record.text_sha256, record.rule_sha256, record.inputs_sha256)):
            raise RecordError("an escalation decision with a malformed digest")
        if record.reason not in ESCALATION_REASONS or bool(record.escalate) != bool(record.reason):
            raise RecordError("an escalation decision with an inconsistent outcome")
        if not isinstance(record.score, (int, float)) or not -1 <= record.score <= 1:
            raise RecordError("an escalation decision with a score outside [-1, 1]")
        return record


_DECISION_REQUIRED = tuple(f.name for f in fields(EscalationDecision) if f.name != "fallback")
