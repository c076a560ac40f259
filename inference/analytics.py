"""Post-call analytics: closed conversations into the control plane, and a summary and QA score for a sample.

**Ingest** (``conversations_ingest``, a periodic worker job): the data plane puts a closed-conversation record on
the ``closed_conversation_stream`` stream when a conversation closes. The ingest reads it with a consumer group,
writes the ``Conversation`` row (idempotent on the tenant and the data plane's conversation id), decides whether it
is sampled (``sampled``: the tenant's ``analytics_sample_percent``, by a hash of the conversation id, so a retry
decides the same) and, for a sampled one, creates a pending ``ConversationAnalysis`` and queues
``analyse_conversation`` after the commit. The entry is acknowledged only after that commit: a worker that dies
first leaves it pending, and another takes it over.

**Where the transcript lives**: only in the stream entry, never in a task's arguments (which a broker keeps and
Celery may log) nor in our database. An entry is deleted at once when its conversation isn't sampled, and after
its analysis ends (done, or failed for good) when it is; entries older than
``INFERENCE_ANALYTICS_TRANSCRIPT_MAX_AGE_S`` are trimmed whatever their state, so content never lingers in
Redis for want of a worker.

**Analysis** (``conversation_analyse``): one chat completion with ``response_format`` json_schema through the same
dispatch as `/v1` (``inference.analytics_dispatch``), as the tenant's "Post-call analytics" caller, so limits,
billing, redaction and the usage event apply. The answer is validated against the schema; bad output is asked
for again up to ``INFERENCE_ANALYTICS_MAX_ATTEMPTS`` times, then the analysis fails with the reason. The same
transcript, rubric version and model (the content hash) reuse the tenant's earlier analysis: no second model
call. The QA score is an automated decision, recorded in the audit chain as ``adm.qa_score`` with the inputs'
digests and no text.

**Personal content**: the summary and the reasons are derived from what the customer said. They are kept with the
conversation and blanked by ``conversation_content_erase`` (the retention and erasure jobs call it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import UTC, datetime

import jsonschema
import orjson
import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import contract
from core.redis import get_redis, key
from core.streams import GroupReader
from inference.models import Conversation, ConversationAnalysis
from tenants.models import Tenant

logger = logging.getLogger("wattle.analytics")

INGEST_GROUP = "analytics"
RUBRIC_VERSION = "2026-12"
# The rubric, in the order the console shows it: item -> what a reviewer looks for.
RUBRIC: dict[str, str] = {
    "greeting": "The agent greeted the customer and introduced the service politely.",
    "identification": "The agent confirmed who the customer is, as the business requires, before discussing their "
                      "account, and asked for no more personal information than needed.",
    "empathy": "The agent acknowledged the customer's feelings and situation in a caring, respectful way.",
    "resolution": "The customer's issue was resolved, or a clear next step and timeframe was agreed.",
    "compliance": "The agent made no misleading promises, gave required disclosures, and handled personal "
                  "information as the Australian Privacy Principles require.",
}
MAX_SUMMARY_CHARS = 1200
MAX_REASON_CHARS = 300
RESPONSE_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "rubric"],
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": MAX_SUMMARY_CHARS},
        "rubric": {
            "type": "object",
            "additionalProperties": False,
            "required": list(RUBRIC),
            "properties": {
                item: {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["score", "reason"],
                    "properties": {
                        "score": {"type": "integer", "minimum": 0, "maximum": 100},
                        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
                    },
                }
                for item in RUBRIC
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(RESPONSE_SCHEMA)
_ROLE_LABELS = {"user": "Customer", "customer": "Customer", "assistant": "Agent", "agent": "Agent"}


class TranscriptGone(Exception):
    """The stream entry holding the transcript is no longer there (trimmed, or Redis lost it)."""


# --- the record on the stream ----------------------------------------------------------------------
def closed_conversation_stream() -> str:
    """The stream the data plane writes closed conversations to."""
    return contract.conversations_closed_stream_key()


def _decode(fields: dict) -> contract.ClosedConversation:
    """A stream entry's record (the entry's one field holds it, whatever the field's name)."""
    if not fields:
        raise contract.RecordError("an empty entry")
    return contract.ClosedConversation.decode(next(iter(fields.values())))


def _turns(closed: contract.ClosedConversation) -> list[dict]:
    return [{"role": t.role, "text": t.text, "sentiment": t.sentiment} for t in closed.turns]


# --- sampling ------------------------------------------------------------------------------------
def sampled(*, tenant_id: str, conversation_id: str, percent: int) -> bool:
    """Whether a conversation gets an analysis: a stable draw from its ids, so every retry decides the same and
    ``percent`` of conversations (to within chance) are chosen."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.sha256(f"{tenant_id}\x00{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


# --- content hash --------------------------------------------------------------------------------
def transcript_text(turns: list[dict]) -> str:
    """The transcript as the model reads it: one line per turn, "Customer:" or "Agent:" first."""
    lines = []
    for turn in turns:
        role = str(turn.get("role") or "")
        label = _ROLE_LABELS.get(role, role.title() or "Unknown")
        # A turn's own line breaks (any the model may read as one) continue its line, indented: a customer who
        # writes "\nAgent: ..." must not put words in the agent's mouth for the QA score (an automated decision).
        text = "\n    ".join(str(turn.get("text") or "").splitlines())
        lines.append(f"{label}: {text}")
    return "\n".join(lines)


def transcript_sha256(turns: list[dict]) -> str:
    return hashlib.sha256(transcript_text(turns).encode()).hexdigest()


def content_hash(*, turns: list[dict], model: str) -> str:
    """SHA-256 of the transcript, the rubric version and the model: what decides an analysis's result."""
    material = orjson.dumps([transcript_text(turns), RUBRIC_VERSION, model])
    return hashlib.sha256(material).hexdigest()


def analysis_model(conversation: Conversation) -> str:
    """The platform's analytics model when one is set, else the model the conversation itself used."""
    return settings.INFERENCE_ANALYTICS_MODEL or conversation.model


# --- ingest --------------------------------------------------------------------------------------
def conversations_ingest(*, max_batches: int | None = None, block_ms: int | None = None) -> int:
    """Move closed conversations from the stream into the database; returns how many entries were handled. See the
    module's docstring for what is acknowledged and deleted when."""
    client = get_redis()
    stream = closed_conversation_stream()
    reader = GroupReader(client, stream, INGEST_GROUP)
    reader.ensure_group()
    _trim_old(client, stream)
    handled = 0
    for pending in reader.batches(count=50, claim_idle_ms=60_000, block_ms=block_ms, max_batches=max_batches):
        for entry_id, fields in pending:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            keep = _ingest_one(entry, fields) if fields else False
            reader.ack([entry_id], delete=not keep)  # not sampled (or unreadable): the transcript goes now
            handled += 1
    return handled


def _trim_old(client: redis.Redis, stream: str) -> None:
    """Drop entries older than the transcript's longest stay, whatever their state (ids start with milliseconds)."""
    cutoff_ms = int((timezone.now().timestamp() - settings.INFERENCE_ANALYTICS_TRANSCRIPT_MAX_AGE_S) * 1000)
    if cutoff_ms > 0:
        client.xtrim(stream, minid=f"{cutoff_ms}-0", approximate=False)


def _ingest_one(entry_id: str, fields: dict) -> bool:
    """Write one closed conversation; True when its entry must stay (an analysis will read its transcript)."""
    try:
        closed = _decode(fields)
    except contract.RecordError as exc:
        logger.error("analytics: dropping a malformed closed-conversation record (%s)", exc.__class__.__name__)
        return False
    tenant = Tenant.objects.filter(pk=closed.tenant).first() if _is_uuid(closed.tenant) else None
    if tenant is None:
        logger.warning("analytics: a closed conversation of an unknown tenant was dropped")
        return False
    analysis = conversation_record(tenant=tenant, closed=closed)
    if analysis is None:
        return False
    if analysis.status == ConversationAnalysis.Status.PENDING:
        from inference.tasks import analyse_conversation

        transaction.on_commit(lambda: analyse_conversation.delay(str(analysis.id), entry_id))
        return True
    return False


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _sentiment_trail(turns: list[dict]) -> list[float]:
    """The scores of the turns that have one (the customer's), in order; nothing of what was said."""
    return [round(float(t["sentiment"]), 4) for t in turns
            if isinstance(t.get("sentiment"), int | float) and not isinstance(t["sentiment"], bool)]


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC) if epoch > 0 else timezone.now()


def _record_turn_decisions(*, tenant: Tenant, closed: contract.ClosedConversation,
                           conversation: Conversation) -> None:
    """Every customer turn was an automated decision (escalate or not, from its sentiment score and the tenant's
    rule; privacy policy, APP 1.7-1.9). The escalations are audited as they happen (``inference.adm``); this one
    entry per conversation records every turn's decision, escalated or not, by its inputs' digest, score and
    label: never text."""
    from audit.services import record

    decisions = [
        {"turn": index, "score": turn.sentiment, "label": turn.label, "inputs_sha256": turn.inputs_sha256,
         "escalated": closed.escalation_turn == index}
        for index, turn in enumerate(closed.turns) if turn.role == "user" and turn.inputs_sha256
    ]
    if decisions:
        record(action="adm.sentiment_decisions", tenant=tenant, target=conversation,
               data={"conversation": closed.conversation_id, "scorer": closed.scorer, "decisions": decisions})


# --- erasure of conversations still on the stream -----------------------------------------------------
ERASED_CUSTOMER = "~erased"  # as ``inference.personal_data``: no caller can send it (``~`` is not allowed)


def _erasure_key(tenant_id: str, customer_id: str) -> str:
    return key("analytics", "erased", hashlib.sha256(f"{tenant_id}\x00{customer_id}".encode()).hexdigest())


def erasure_note(*, tenant_id: str, customer_id: str, at: float) -> None:
    """Remember, for as long as a closed conversation can wait on the stream, that this customer's records were
    erased at ``at`` (epoch seconds): a conversation that closed before then but is ingested after is
    de-identified on arrival. Keyed by a digest: the id itself is not written to Redis."""
    try:
        get_redis().set(_erasure_key(tenant_id, customer_id), repr(at),
                        ex=max(1, int(settings.INFERENCE_ANALYTICS_TRANSCRIPT_MAX_AGE_S)))
    except redis.RedisError as exc:  # the erasure itself has committed: say so, don't fail its page
        logger.error("analytics: could not note an erasure for conversations still on the stream (%s)",
                     exc.__class__.__name__)


def _erased_before_close(tenant_id: str, closed: contract.ClosedConversation) -> bool:
    if not closed.customer_id:
        return False
    raw = get_redis().get(_erasure_key(tenant_id, closed.customer_id))
    try:
        return raw is not None and closed.closed <= float(raw)
    except ValueError:
        return False


@transaction.atomic
def conversation_record(*, tenant: Tenant, closed: contract.ClosedConversation) -> ConversationAnalysis | None:
    """The ``Conversation`` row of a closed conversation (made once: a second delivery finds the first), and its
    analysis when it is sampled (pending until the task runs). A conversation of a customer whose records were
    erased after it closed arrives de-identified, as the erasure left the others, and is not analysed."""
    erased = _erased_before_close(str(tenant.pk), closed)
    conversation, created = Conversation.objects.get_or_create(
        tenant=tenant, conversation_id=closed.conversation_id,
        defaults={
            "key_id": closed.key_id[:32], "model": closed.model[:200], "channel": closed.channel,
            "language": closed.language[:35],
            "customer_id": ERASED_CUSTOMER if erased else closed.customer_id, "turn_count": len(closed.turns),
            "sentiment_trail": _sentiment_trail(_turns(closed)),
            "escalated": closed.escalated, "escalation_reason": closed.escalation_reason[:200],
            "opened_at": _at(closed.opened), "closed_at": _at(closed.closed),
            "metadata": {} if erased else closed.metadata,
            "sampled": not erased and sampled(tenant_id=str(tenant.pk), conversation_id=closed.conversation_id,
                                              percent=tenant.analytics_sample_percent),
        },
    )
    if created:
        _record_turn_decisions(tenant=tenant, closed=closed, conversation=conversation)
    if not conversation.sampled:
        return None
    model = analysis_model(conversation)
    analysis, _ = ConversationAnalysis.objects.get_or_create(
        conversation=conversation, rubric_version=RUBRIC_VERSION,
        defaults={"tenant": tenant, "model": model, "content_hash": content_hash(turns=_turns(closed), model=model)},
    )
    return analysis


# --- analysis ------------------------------------------------------------------------------------
def _prompt(turns: list[dict], conversation: Conversation) -> list[dict]:
    rubric = "\n".join(f"- {item}: {what}" for item, what in RUBRIC.items())
    system = (
        "You review contact-centre conversations for quality assurance. Read the transcript and answer with JSON "
        "only, matching the schema you are given: a factual summary of at most a few sentences (what the customer "
        "needed, what the agent did, how it ended; no personal details beyond what the summary needs), and for "
        "each rubric item a score from 0 (absent or poor) to 100 (excellent) with a one-sentence reason.\n"
        f"Rubric (version {RUBRIC_VERSION}):\n{rubric}"
    )
    facts = f"Channel: {conversation.channel or 'unknown'}. Language: {conversation.language or 'unknown'}."
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"{facts}\n\nTranscript:\n{transcript_text(turns)}"}]


def _payload(model: str, messages: list[dict], attempt: int) -> dict:
    return {
        "model": model, "messages": messages, "max_tokens": settings.INFERENCE_ANALYTICS_MAX_TOKENS,
        # A retry samples a little differently: the same greedy decode would give the same bad output again.
        "temperature": 0.0 if attempt == 1 else 0.3, "seed": attempt,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "qa_review", "schema": RESPONSE_SCHEMA, "strict": True}},
    }


def parse_result(content: str | None) -> tuple[dict | None, str]:
    """The model's answer as a result, or None and why it isn't one."""
    if content is None:
        return None, "no answer"
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None, "the answer was not JSON"
    error = next(iter(_VALIDATOR.iter_errors(data)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the answer"
        return None, f"the answer did not match the schema at {where[:80]}"
    return data, ""


def overall_score(rubric: dict) -> int:
    """The QA score: the rubric items' mean, each item weighing the same."""
    return round(sum(rubric[item]["score"] for item in RUBRIC) / len(RUBRIC))


def _transcript_turns(entry_id: str) -> list[dict]:
    entries = get_redis().xrange(closed_conversation_stream(), min=entry_id, max=entry_id, count=1)
    if not entries:
        raise TranscriptGone
    return _turns(_decode(entries[0][1]))


def _forget_transcript(entry_id: str) -> None:
    get_redis().xdel(closed_conversation_stream(), entry_id)


def run_lock_timeout_s() -> float:
    """How long one run holds its analysis: longer than every attempt can take, so a second delivery of the same
    analysis never calls the model (and bills the tenant) alongside the first."""
    return settings.INFERENCE_ANALYTICS_TIMEOUT_S * (settings.INFERENCE_ANALYTICS_MAX_ATTEMPTS + 1)


def conversation_analyse(*, analysis_id: str, entry_id: str) -> ConversationAnalysis | None:
    """Run a pending analysis to its end (done or failed). Safe to run twice: one run at a time holds a short
    Redis lock, and an analysis that has ended is left as it is."""
    from inference.analytics_dispatch import bridge

    analysis = ConversationAnalysis.objects.select_related("conversation", "tenant").filter(pk=analysis_id).first()
    if analysis is None:
        _forget_transcript(entry_id)
        return None
    if analysis.status != ConversationAnalysis.Status.PENDING:
        _forget_transcript(entry_id)
        return analysis
    lock = get_redis().lock(key("analytics", "lock", str(analysis.pk)), timeout=run_lock_timeout_s(),
                            blocking=False)
    if not lock.acquire():
        return analysis  # another worker is running it
    try:
        try:
            turns = _transcript_turns(entry_id)
        except TranscriptGone:
            return _fail(analysis, "The transcript was no longer available.")
        earlier = (ConversationAnalysis.objects
                   .filter(tenant=analysis.tenant, content_hash=analysis.content_hash,
                           status=ConversationAnalysis.Status.DONE)
                   .exclude(pk=analysis.pk).order_by("created_at").first())
        if earlier is not None:
            result = {"summary": earlier.summary, "rubric": earlier.rubric}
            analysis = _complete(analysis, result, turns=turns, cached_from=earlier, outcome=None)
        else:
            analysis = _run_model(analysis, turns, bridge)
        _forget_transcript(entry_id)
        return analysis
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


def _run_model(analysis: ConversationAnalysis, turns: list[dict], bridge) -> ConversationAnalysis:
    if not analysis.model:
        return _fail(analysis, "No model to analyse with: set INFERENCE_ANALYTICS_MODEL.")
    messages = _prompt(turns, analysis.conversation)
    reason = ""
    for attempt in range(1, settings.INFERENCE_ANALYTICS_MAX_ATTEMPTS + 1):
        try:
            payload = _payload(analysis.model, messages, attempt)
            outcome = bridge.chat(tenant_id=str(analysis.tenant_id), payload=payload,
                                  timeout_s=settings.INFERENCE_ANALYTICS_TIMEOUT_S)
        except TimeoutError:
            outcome, reason = None, "the model took too long"
        if outcome is not None:
            _account(analysis, outcome, attempt)
            if outcome.error is not None:
                reason = f"the request was refused: {outcome.error.code or outcome.error.type} ({outcome.error.status})"
            else:
                result, reason = parse_result(outcome.content)
                if result is not None:
                    return _complete(analysis, result, turns=turns, cached_from=None, outcome=outcome)
        logger.warning("analytics: attempt %s of analysis %s failed: %s", attempt, analysis.pk, reason)
    return _fail(analysis, f"Gave up after {settings.INFERENCE_ANALYTICS_MAX_ATTEMPTS} attempts: {reason}.")


@transaction.atomic
def _account(analysis: ConversationAnalysis, outcome, attempt: int) -> None:
    """Count one model call's tokens and cost on the analysis (they are billed whether or not its output was used)."""
    analysis.attempts = attempt
    analysis.prompt_tokens += outcome.prompt_tokens
    analysis.completion_tokens += outcome.completion_tokens
    analysis.cost_micro_aud += outcome.cost_micro_aud
    analysis.request_id = outcome.request_id
    analysis.save(update_fields=["attempts", "prompt_tokens", "completion_tokens", "cost_micro_aud", "request_id"])


@transaction.atomic
def _complete(analysis: ConversationAnalysis, result: dict, *, turns: list[dict], cached_from, outcome):
    from audit.services import record

    current = ConversationAnalysis.objects.select_for_update().get(pk=analysis.pk)
    if current.status != ConversationAnalysis.Status.PENDING:
        # Ended while the model ran: erased (the result is of erased content) or finished by another worker.
        return current
    rubric = {item: {"score": int(result["rubric"][item]["score"]),
                     "reason": str(result["rubric"][item].get("reason") or "")[:MAX_REASON_CHARS]}
              for item in RUBRIC}
    analysis.summary = str(result["summary"])[:MAX_SUMMARY_CHARS]
    analysis.rubric = rubric
    analysis.qa_score = overall_score(rubric)
    analysis.status = ConversationAnalysis.Status.DONE
    analysis.failure_reason = ""
    analysis.cached_from = cached_from
    analysis.completed_at = timezone.now()
    analysis.save()
    # The automated decision (the privacy policy's ADM section): its inputs' digests and the scores, never text.
    record(action="adm.qa_score", tenant=analysis.tenant, target=analysis, data={
        "conversation": analysis.conversation.conversation_id, "analysis": str(analysis.pk),
        "model": analysis.model, "rubric_version": RUBRIC_VERSION, "qa_score": analysis.qa_score,
        "scores": {item: rubric[item]["score"] for item in RUBRIC},
        "transcript_sha256": transcript_sha256(turns), "content_hash": analysis.content_hash,
        "summary_sha256": hashlib.sha256(analysis.summary.encode()).hexdigest(),
        "request_id": analysis.request_id, "cached_from": str(cached_from.pk) if cached_from else None,
    })
    return analysis


@transaction.atomic
def _fail(analysis: ConversationAnalysis, reason: str) -> ConversationAnalysis:
    analysis.status = ConversationAnalysis.Status.FAILED
    analysis.failure_reason = reason[:300]
    analysis.completed_at = timezone.now()
    analysis.save(update_fields=["status", "failure_reason", "completed_at"])
    return analysis


# --- erasure -------------------------------------------------------------------------------------
@transaction.atomic
def conversation_content_erase(*, tenant: Tenant, conversation_ids: list[str]) -> int:
    """Blank what was derived from these conversations' content (the analyses' summaries and reasons, and the
    conversations' metadata), keeping the scores, counts and the audit trail. ``conversation_ids`` are the data
    plane's ids; returns how many conversations were touched. For the retention and individuals'-requests jobs."""
    from audit.services import record

    conversations = Conversation.objects.filter(tenant=tenant, conversation_id__in=list(conversation_ids))
    ids = list(conversations.values_list("pk", flat=True))
    if not ids:
        return 0
    conversations.update(metadata={})
    for analysis in ConversationAnalysis.objects.select_for_update().filter(tenant=tenant, conversation_id__in=ids):
        analysis.summary = ""
        analysis.rubric = {item: {**value, "reason": ""} for item, value in (analysis.rubric or {}).items()}
        # The content hash is a digest of the erased words, and the cache key: kept, a later identical transcript
        # would be given this blanked analysis instead of its own.
        analysis.content_hash = ""
        if analysis.status == ConversationAnalysis.Status.PENDING:
            # Not yet run: it must never run (its task finds it ended and deletes the transcript from Redis).
            analysis.status = ConversationAnalysis.Status.FAILED
            analysis.failure_reason = "The conversation's content was erased before it was analysed."
            analysis.completed_at = timezone.now()
        analysis.save(update_fields=["summary", "rubric", "content_hash", "status", "failure_reason",
                                     "completed_at"])
    record(action="conversations.content_erase", tenant=tenant, data={"conversations": len(ids)})
    return len(ids)
