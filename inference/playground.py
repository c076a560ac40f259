"""What the playground's socket (``inference.consumers.PlaygroundConsumer``) decides without the data plane: who
may use it, what a browser's frame may hold, and how often a connection may send one. docs/playground.md
describes the protocol.

The socket has no HTTP request to hand to ``tenants.access.resolve_tenant``, so ``playground_access`` asks the
same questions of the database itself, on connect and again for every frame: is the session still signed in
(Django's own check, so a sign-out or a password change elsewhere ends it), is the user a member of the
tenant, does the role allow ``playground.use``, and has an owner or admin their second factor
(``role_mfa_satisfied``, the resolver's rule). Platform staff acting as a tenant never reach it: support may
not use the playground.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from importlib import import_module
from types import SimpleNamespace

import orjson
from django.conf import settings
from django.contrib import auth

from core import ccaas, contract, sentiment
from core.keys import PLAYGROUND_KEY_ID
from inference.gateway import errors
from inference.gateway.errors import GatewayError
from tenants.access import role_mfa_satisfied
from tenants.models import Membership
from tenants.permissions import Action, can


class Close(IntEnum):
    """Close codes of the playground's socket (the page reconnects after any other)."""

    NOT_SIGNED_IN = 4401  # no session, or it ended (signed out, password changed)
    FORBIDDEN = 4403  # the role may not use the playground, or the membership ended mid-session
    NOT_FOUND = 4404  # not a member of this tenant (whether it exists is not revealed)
    FLOODING = 4429  # kept sending after being told to slow down


# --- who -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlaygroundAccess:
    tenant_id: str
    slug: str
    user_id: str
    role: str
    # The tenant's escalation rule and scorer settings as they are now (read with the membership, so a change in
    # the tenant's settings applies from the next customer turn); the rest of the record is the data plane's.
    record: contract.TenantRecord | None = None


def playground_access(*, session_key: str | None, user_id: str, slug: str) -> PlaygroundAccess | Close:
    """The caller's access to the playground of tenant ``slug``, read from the database now, or the close code
    that ends the socket. ``user_id`` is the user the socket was opened as: a session that has since become
    someone else's is refused too. Synchronous (ORM): the consumer runs it in a thread."""
    if not session_key:
        return Close.NOT_SIGNED_IN
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(SimpleNamespace(session=store))  # verifies the session's auth hash, as a request would
    if not user.is_authenticated or str(user.pk) != user_id:
        return Close.NOT_SIGNED_IN
    membership = Membership.objects.select_related("tenant").filter(tenant__slug=slug, user=user).first()
    if membership is None:
        return Close.NOT_FOUND
    if not can(membership.role, Action.PLAYGROUND_USE) or not role_mfa_satisfied(user, membership.role):
        return Close.FORBIDDEN
    tenant = membership.tenant
    record = contract.TenantRecord(
        tenant=str(tenant.pk), status=tenant.status, escalation_threshold=tenant.escalation_threshold,
        escalation_turns=tenant.escalation_turns, escalation_phrases=tenant.escalation_phrase_list,
        sentiment_scorer=tenant.sentiment_scorer, sentiment_model=tenant.sentiment_model)
    return PlaygroundAccess(tenant_id=str(membership.tenant_id), slug=slug, user_id=user_id, role=membership.role,
                            record=record)


# --- what ------------------------------------------------------------------------------------------
_TURN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROLES = frozenset({"system", "user", "assistant"})
MAX_MESSAGES = 256
_MAX_MODEL_CHARS = 200


@dataclass(frozen=True, slots=True)
class Chat:
    turn: str
    payload: dict  # the /v1 chat body the dispatch prepares (streamed)
    context: ccaas.Context | None = None  # customer-conversation mode: channel, language, customer id
    # The page's chat session (a new one on Reset; a re-opened one keeps its id): the transcript record's
    # conversation id when the tenant keeps transcripts, so the member's history groups its turns.
    conversation: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    turn: str | None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Frame = Chat | Stop | Ping


def parse_frame(text: str) -> Frame:
    """A browser's frame, or the 400 to answer it with. Only the fields the playground sends are taken, each
    bounded; the chat body is then validated by the dispatch exactly as a `/v1` body is (temperature,
    max_tokens, the model and its context)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise errors.bad_request("A frame must be a JSON object.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise errors.bad_request("A frame must be a JSON object.", code="invalid_json")
    kind = data.get("type")
    if kind == "ping":
        return Ping()
    turn = data.get("id")
    if turn is not None and (not isinstance(turn, str) or not _TURN_ID.fullmatch(turn)):
        raise errors.bad_request("`id` must be 1 to 64 letters, digits, '-' or '_'.", param="id", code="invalid_id")
    if kind == "stop":
        return Stop(turn)
    if kind != "chat":
        raise errors.bad_request("`type` must be chat, stop or ping.", param="type", code="unknown_type")
    if turn is None:
        raise errors.bad_request("A chat frame needs an `id`.", param="id", code="invalid_id")
    conversation = data.get("conversation")
    if conversation is not None and (not isinstance(conversation, str) or not _TURN_ID.fullmatch(conversation)):
        raise errors.bad_request("`conversation` must be 1 to 64 letters, digits, '-' or '_'.",
                                 param="conversation", code="invalid_id")
    model = data.get("model")
    if not isinstance(model, str) or not model or len(model) > _MAX_MODEL_CHARS:
        raise errors.bad_request("Choose a model.", param="model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise errors.bad_request(f"`messages` must be a list of 1 to {MAX_MESSAGES} messages.", param="messages")
    clean = []
    for message in messages:
        if (not isinstance(message, dict) or message.get("role") not in _ROLES
                or not isinstance(message.get("content"), str)):
            raise errors.bad_request("Each message needs a role (system, user or assistant) and text content.",
                                     param="messages")
        clean.append({"role": message["role"], "content": message["content"]})
    context = _context(data.get("ccaas"))
    if context is not None:
        # The model is told where it is talking, ahead of the page's own system prompt (one system message:
        # Mistral's templates take one, first).
        instruction = context.instruction()
        if clean[0]["role"] == "system":
            clean[0] = {"role": "system", "content": f"{instruction}\n\n{clean[0]['content']}"}
        else:
            clean.insert(0, {"role": "system", "content": instruction})
    payload: dict = {"model": model, "messages": clean, "stream": True}
    for name in ("temperature", "max_tokens"):
        if data.get(name) is not None:
            payload[name] = data[name]  # its type and range are the dispatch's to check, as on /v1
    return Chat(turn, payload, context, conversation or "")


def _context(raw: object) -> ccaas.Context | None:
    """Customer-conversation mode's settings (``core.ccaas``), or None when the page is in plain chat mode."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise errors.bad_request("`ccaas` must be an object.", param="ccaas")
    try:
        return ccaas.context(channel=raw.get("channel"), language=raw.get("language"),
                             customer_id=raw.get("customer_id"))
    except ccaas.Invalid as exc:
        raise errors.bad_request(str(exc), param=f"ccaas.{exc.field}") from None


# --- the customer's side -----------------------------------------------------------------------------
# Canned customers for customer-conversation mode: the page plays a persona's lines in order (then from the
# top), one per "Customer's turn", so a test (and a person) gets the same conversation every time. The angry
# customer's first two turns are strongly negative and its third names a trigger phrase, so the default rule
# (two negative turns in a row, or a phrase) escalates by the second turn and a phrase-only rule by the third.
PERSONAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "calm": ("Calm", (
        "Hi there, I'd like to check when my order will arrive, please.",
        "Thanks, that's helpful. Could you also update the email address on my account?",
        "Great, thank you for sorting that out so quickly.",
        "That's everything for today. Have a lovely afternoon!",
    )),
    "confused": ("Confused", (
        "Hi, um, I'm not sure which plan I'm on? The bill says something different from the website.",
        "Sorry, I'm a bit confused. Is the discount already included, or do I have to ask for it?",
        "So do I need to do anything, or does it change by itself next month?",
        "Okay, thanks, I think I understand now. Where would I see that on the bill?",
    )),
    "angry": ("Angry", (
        "This is absolutely terrible. My order is three weeks late, your service is useless and I am furious.",
        "No, that is not good enough! This is the worst, most ridiculous experience I have ever had. "
        "I am angry and sick of being lied to.",
        "I want to speak to a manager right now. This is a disgrace and I'm making a complaint.",
        "Stop wasting my time. You have ruined my week and I hate dealing with this awful company.",
    )),
}


# --- sentiment and escalation ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Assessment:
    """The latest customer turn's sentiment and the rule's decision on the conversation so far (what the
    ``sentiment`` frame says), with the digests the audit entry records instead of any text."""

    turn: int  # the customer turn it is about, counted from 1
    index: int  # its index among the conversation's turns (customer and model, from 0), as the API counts turns
    score: float
    label: str
    escalate: bool
    reason: str  # in words, for the page
    code: str  # "negative_sentiment", "trigger_phrase" or ""
    scorer: str
    fallback: str
    text_sha256: str
    rule_sha256: str
    inputs_sha256: str


Score = Callable[[str], Awaitable[sentiment.Scored]]


async def assess(messages: list[dict], record: contract.TenantRecord, score: Score) -> Assessment | None:
    """Score the conversation's customer turns (the ``user`` messages the page sent, in order) with ``score`` (the
    tenant's scorer) and decide on the latest with the tenant's rule; None when there is no customer turn."""
    turns = [m for m in messages if m["role"] != "system"]
    customer = [m["content"] for m in turns if m["role"] == "user"]
    if not customer or turns[-1]["role"] != "user":
        return None
    rule = sentiment.EscalationRule.from_record(record)
    # The page sends the whole conversation each time and nothing is kept between frames but the scores (the
    # consumer's ``score`` remembers them for the connection, so an embedding scorer embeds each turn once).
    earlier = [(sentiment.text_digest(text), (await score(text)).sentiment.score) for text in customer[:-1]]
    scored = await score(customer[-1])
    latest = scored.sentiment
    decision = sentiment.decide(rule, [value for _digest, value in earlier], customer[-1], latest)
    text_sha256, rule_sha256 = sentiment.text_digest(customer[-1]), rule.digest()
    looked_at = earlier[-(rule.turns - 1):] if rule.turns > 1 else []
    inputs_sha256 = sentiment.decision_inputs_digest(
        text_sha256=text_sha256, rule_sha256=rule_sha256, scorer=scored.scorer, score=latest.score, trail=looked_at)
    return Assessment(turn=len(customer), index=len(turns) - 1, score=latest.score, label=latest.label,
                      escalate=decision.escalate, reason=_reason_text(decision), code=decision.reason,
                      scorer=scored.scorer, fallback=scored.fallback, text_sha256=text_sha256,
                      rule_sha256=rule_sha256, inputs_sha256=inputs_sha256)


def _reason_text(decision: sentiment.Escalation) -> str:
    if decision.reason == sentiment.TRIGGER_PHRASE:
        return f"the customer said “{decision.detail}”"
    if decision.reason == sentiment.NEGATIVE_SENTIMENT:
        return f"negative sentiment, {decision.detail}"
    return ""


def record_escalation(access: PlaygroundAccess, assessment: Assessment, *, request_id: str) -> None:
    """The automated decision on a customer turn, in the audit chain as the conversation API's are
    (``inference.adm``: action ``adm.escalation``, the same data: digests of the turn, the rule and every input,
    scorer, score and outcome; never text), plus ``surface`` and the reply's ``request_id``; the member who ran
    the playground is the actor. Every decision is recorded, not only those that escalate: the playground keeps
    no conversation whose turns could carry them. Synchronous (ORM): the consumer runs it in a thread."""
    from django.contrib.auth import get_user_model

    from audit.services import record
    from inference import adm
    from tenants.models import Tenant

    decision = contract.EscalationDecision(
        decision_id=f"playground:{request_id}", tenant=access.tenant_id, conversation_id="",
        key_id=PLAYGROUND_KEY_ID, time=time.time(), turn=assessment.index, escalate=assessment.escalate,
        reason=assessment.code, text_sha256=assessment.text_sha256, rule_sha256=assessment.rule_sha256,
        inputs_sha256=assessment.inputs_sha256, scorer=assessment.scorer, score=assessment.score,
        label=assessment.label, fallback=assessment.fallback)
    tenant = Tenant.objects.filter(pk=access.tenant_id).first()
    user = get_user_model().objects.filter(pk=access.user_id).first()
    record(action=adm.ACTION, actor=user, tenant=tenant,
           data={**adm.audit_data(decision), "surface": "playground", "request_id": request_id,
                 "customer_turn": assessment.turn})


# --- how often -------------------------------------------------------------------------------------
class FrameAllowance:
    """A token bucket per connection: ``rate`` frames a second, ``burst`` at once. Refusals in a row are counted,
    so the consumer can hang up on a client that ignores them."""

    __slots__ = ("_at", "_burst", "_clock", "_rate", "_tokens", "refused_in_a_row")

    def __init__(self, *, rate: float, burst: int, clock=time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()
        self.refused_in_a_row = 0

    def take(self) -> float:
        """0 if a frame may go now; else the seconds until one may."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.refused_in_a_row = 0
            return 0.0
        self.refused_in_a_row += 1
        return (1 - self._tokens) / self._rate


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"A frame may hold at most {limit} bytes: shorten the conversation or reset it.",
                        code="message_too_large")


def rate_limited(wait_s: float) -> GatewayError:
    seconds = max(1, round(wait_s + 0.5))
    return GatewayError(429, "You are sending faster than the playground allows. Please wait a moment.",
                        type="requests", code="rate_limit_exceeded", headers={"retry-after": str(seconds)})
