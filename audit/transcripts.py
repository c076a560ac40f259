"""Transcript retention (R-RET, R-SEC-3; docs/privacy.md "Transcript retention", docs/audit.md "Break-glass").

- ``transcripts_ingest``: the data plane's ``TranscriptRecord``s (``inference.gateway.transcripts``) from the Redis
  stream into ``Transcript`` rows, content sealed under the tenant's data key (``audit.envelope``); acknowledged
  after the commit; idempotent on ``(request_id, turn)``.
- ``retention_destroy``: the daily job; deletes rows past ``expires_at`` in batches, each batch audited
  (``retention.destroyed``, a count per tenant) in the transaction that deletes it.
- ``transcripts_offboard``: a closed tenant's content is destroyed at once and its data keys scheduled for
  shredding ``AUDIT_TRANSCRIPT_SHRED_DAYS`` later (``data_keys_shred`` deletes them: crypto-shredding).
- Reading content: ``transcript_content`` decrypts one row and audits the read. Tenant owners and admins read
  their own; platform staff only under a ``BreakGlassGrant`` (reason, fresh re-authentication, expiry), and a
  staff read without one is refused and audited.

Audit imports nothing it records: tenants are reached by id (and, for the audit entry's tenant, through the
foreign key's model), never by importing the tenants app.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit import envelope
from audit.models import BreakGlassGrant, TenantDataKey, Transcript
from audit.services import record
from core import contract
from core.redis import get_redis
from core.streams import GroupReader

logger = logging.getLogger("wattle.transcripts")

INGEST_GROUP = "transcript-ingest"
_CLAIM_IDLE_MS = 60_000


def _tenant_model():
    # The tenant model through the foreign key, so audit never imports the tenants app.
    return Transcript._meta.get_field("tenant").related_model


def _tenant(tenant_id):
    return _tenant_model().objects.filter(pk=tenant_id).first()


# --- ingest ------------------------------------------------------------------------------------------
def _known_tenant(tenant_id: str) -> bool:
    try:
        return _tenant_model().objects.filter(pk=tenant_id).exists()
    except (ValueError, TypeError, ValidationError):  # not a tenant id at all
        return False


def _data_key_for(tenant_id: str, keys: dict) -> TenantDataKey | None:
    if tenant_id not in keys:
        if not _known_tenant(tenant_id):
            keys[tenant_id] = None  # not a tenant (or not even a tenant id): never a poison batch
            return None
        key = envelope.active_data_key(tenant_id, create=False)
        if key is None and not TenantDataKey.objects.filter(tenant_id=tenant_id).exists():
            # Retention turned on without a key (it was on before keys existed): make one now.
            key = envelope.data_key_create(tenant_id)
        if key is not None:
            try:
                envelope.plaintext_key(key)
            except envelope.DecryptionError:
                # The wrapping key no longer opens it (the local key-wrapping key was replaced): new content goes
                # under a new key rather than blocking every tenant's batch; what the old one sealed stays unreadable.
                logger.error("the data key %s of tenant %s can't be unwrapped; making a new one", key.pk, tenant_id)
                key = envelope.data_key_create(tenant_id)
        keys[tenant_id] = key
    return keys[tenant_id]


def _rows(records: list[contract.TranscriptRecord]) -> list[Transcript]:
    keys: dict[str, TenantDataKey | None] = {}
    rows = []
    for item in records:
        key = _data_key_for(item.tenant, keys)
        if key is None:
            # An unknown tenant, or one off-boarded (its keys are being shredded): its content is not kept.
            continue
        created = datetime.fromtimestamp(item.created, tz=UTC)
        row_id = uuid.uuid4()
        sealed = envelope.seal(envelope.plaintext_key(key), item.tenant, str(row_id),
                               {"prompt": item.prompt, "reply": item.reply})
        rows.append(Transcript(
            id=row_id, tenant_id=item.tenant, data_key=key, request_id=item.request_id, turn=item.turn,
            kind=item.kind, conversation_id=item.conversation_id, key_id=(item.key_id or "")[:64],
            customer_id=item.customer_id, model=item.model[:200], endpoint=item.endpoint[:40],
            status=max(0, min(item.status, 32767)), member=item.member, created_at=created,
            expires_at=created + timedelta(days=item.retention_days), sealed=sealed,
        ))
    return rows


def transcripts_ingest(*, max_batches: int | None = None, count: int = 200) -> int:
    """Move transcript records from the Redis stream into the database, sealed. Returns the entries handled.
    Entries are acknowledged (and deleted from the stream) only after the commit; a dead consumer's are taken
    over after a minute; the unique ``(request_id, turn)`` makes a second insert a no-op."""
    reader = GroupReader(get_redis(), contract.transcript_stream_key(), INGEST_GROUP)
    reader.ensure_group()
    handled = 0
    for pending in reader.batches(count=count, claim_idle_ms=_CLAIM_IDLE_MS, max_batches=max_batches):
        records = []
        for _entry_id, fields in pending:
            raw = (fields or {}).get(b"t")
            if raw is None:
                continue  # already deleted from the stream: only its acknowledgement was missing
            try:
                records.append(contract.TranscriptRecord.decode(raw))
            except contract.RecordError as exc:
                logger.error("dropping a malformed transcript record: %s", str(exc)[:120])
        with transaction.atomic():
            Transcript.objects.bulk_create(_rows(records), ignore_conflicts=True, batch_size=500)
        ids = [entry_id for entry_id, _ in pending]
        reader.ack(ids)  # only now: the rows are committed
        handled += len(ids)
    return handled


# --- destruction -------------------------------------------------------------------------------------
def _audit_counts(action: str, counts: Counter, data: dict) -> None:
    tenants = {str(t.pk): t for t in _tenant_model().objects.filter(pk__in=list(counts))}
    for tenant_id, n in sorted(counts.items()):
        record(action=action, tenant=tenants.get(tenant_id), data={**data, "tenant": tenant_id, "count": n})


def retention_destroy(*, now: datetime | None = None, batch: int = 5000) -> dict[str, int]:
    """Delete every transcript past its ``expires_at``, ``batch`` rows per transaction, each batch audited with
    its count per tenant (``retention.destroyed``). Returns the counts per tenant id."""
    now = now or timezone.now()
    total: Counter = Counter()
    while True:
        with transaction.atomic():
            rows = list(Transcript.objects.filter(expires_at__lte=now).order_by("expires_at")
                        .values_list("pk", "tenant_id")[:batch])
            if not rows:
                break
            Transcript.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
            counts = Counter(str(tenant_id) for _, tenant_id in rows)
            _audit_counts("retention.destroyed", counts, {"cut_off": now.isoformat()})
        total.update(counts)
    return dict(total)


def retention_shorten(*, tenant, days: int) -> int:
    """The tenant shortened its retention: what it already holds expires by the new period too (never later
    than it would have). Returns how many rows moved earlier."""
    if days <= 0:
        return 0
    return Transcript.objects.filter(
        tenant_id=tenant.pk, expires_at__gt=F("created_at") + timedelta(days=days),
    ).update(expires_at=F("created_at") + timedelta(days=days))


def _delete_tenant_content(tenant_id) -> int:
    deleted, _ = Transcript.objects.filter(tenant_id=tenant_id).delete()
    return deleted


def transcripts_destroy_all(*, tenant, actor=None, request=None) -> int:
    """An owner's "destroy now": every stored transcript of the tenant, at once. Audited with the count."""
    with transaction.atomic():
        count = _delete_tenant_content(tenant.pk)
        record(action="retention.destroyed_now", actor=actor, tenant=tenant, request=request, data={"count": count})
    return count


def data_key_ensure(*, tenant) -> TenantDataKey | None:
    """The tenant's data key, created if it has none (retention turned on). None for a tenant being
    off-boarded."""
    return envelope.active_data_key(str(tenant.pk), create=True)


def data_key_restore(*, tenant) -> TenantDataKey:
    """A tenant reopened after off-boarding gets a fresh key (its old ones stay scheduled for shredding)."""
    current = envelope.active_data_key(str(tenant.pk), create=False)
    return current or envelope.data_key_create(str(tenant.pk))


def transcripts_offboard(*, tenant, actor=None, request=None) -> dict:
    """Off-boarding (the tenant is closed): its content is destroyed now and its data keys scheduled for
    shredding after ``AUDIT_TRANSCRIPT_SHRED_DAYS``. Call inside the closing transaction; audited
    (``retention.offboarded``)."""
    destroy_after = timezone.now() + timedelta(days=settings.AUDIT_TRANSCRIPT_SHRED_DAYS)
    count = _delete_tenant_content(tenant.pk)
    keys = TenantDataKey.objects.filter(tenant_id=tenant.pk, destroy_after__isnull=True).update(
        destroy_after=destroy_after)
    data = {"destroyed": count, "keys_scheduled": keys, "destroy_after": destroy_after.isoformat()}
    record(action="retention.offboarded", actor=actor, tenant=tenant, request=request, data=data)
    return data


def data_keys_shred(*, now: datetime | None = None) -> int:
    """Delete the data keys whose shredding is due (crypto-shredding: with the wrapped key gone, no copy of the
    content anywhere, backups included, can be decrypted through it). Audited per key. Returns how many."""
    now = now or timezone.now()
    shredded = 0
    for key in TenantDataKey.objects.filter(destroy_after__lte=now):
        with transaction.atomic():
            Transcript.objects.filter(data_key=key).delete()  # none should remain; never keep a key alive for one
            key_id, tenant_id = str(key.pk), key.tenant_id
            key.delete()
            envelope.forget(key_id)
            record(action="retention.key_shredded", tenant=_tenant(tenant_id),
                   data={"data_key": key_id, "provider": key.provider})
        shredded += 1
    return shredded


_last_daily: float | None = None


def retention_jobs() -> dict:
    """The daily retention work: destroy expired content, shred keys now due."""
    return {"destroyed": retention_destroy(), "keys_shredded": data_keys_shred()}


def retention_jobs_due(*, clock=None) -> dict | None:
    """For the embedded default's loop (which runs every few seconds): the daily job, when a day has passed since
    this process last ran it (and once at start)."""
    global _last_daily
    import time

    now = (clock or time.monotonic)()
    if _last_daily is not None and now - _last_daily < settings.AUDIT_RETENTION_JOBS_INTERVAL_S:
        return None
    _last_daily = now
    return retention_jobs()


# --- reading content (R-SEC-3) ----------------------------------------------------------------------
class BreakGlassRequired(Exception):
    """A staff read without an active break-glass grant for the tenant."""


def transcript_content(*, transcript: Transcript, actor, request=None, grant: BreakGlassGrant | None = None) -> dict:
    """Decrypt one transcript's content for ``actor`` and audit the read (``transcript.read``, with the
    break-glass grant it was read under, if any). Raises ``envelope.DecryptionError`` if it doesn't decrypt."""
    key = envelope.plaintext_key(transcript.data_key)
    content = envelope.open_sealed(key, str(transcript.tenant_id), str(transcript.pk), transcript.sealed)
    record(action="transcript.read", actor=actor, tenant=transcript.tenant, target=transcript, request=request,
           data={"request_id": transcript.request_id, "turn": transcript.turn,
                 "break_glass": str(grant.pk) if grant is not None else None})
    return content


def break_glass_active(*, user, tenant) -> BreakGlassGrant | None:
    return (BreakGlassGrant.objects.filter(user=user, tenant_id=tenant.pk, expires_at__gt=timezone.now())
            .order_by("-expires_at").first())


def break_glass_grant(*, user, tenant, reason: str, request=None) -> BreakGlassGrant:
    """Give ``user`` (staff, freshly re-authenticated: the view requires it) read access to ``tenant``'s
    transcripts for ``AUDIT_BREAK_GLASS_MINUTES``. Audited (``transcript.break_glass.grant``) with the reason."""
    reason = " ".join(reason.split())
    if not reason or len(reason) > BreakGlassGrant.REASON_MAX:
        raise ValueError(f"a reason of 1 to {BreakGlassGrant.REASON_MAX} characters is required")
    if not user.is_staff:
        raise PermissionError("break-glass access is for platform staff")
    minutes = settings.AUDIT_BREAK_GLASS_MINUTES
    with transaction.atomic():
        grant = BreakGlassGrant.objects.create(user=user, tenant=tenant, reason=reason,
                                               expires_at=timezone.now() + timedelta(minutes=minutes))
        record(action="transcript.break_glass.grant", actor=user, tenant=tenant, target=grant, request=request,
               data={"reason": reason, "minutes": minutes, "expires_at": grant.expires_at.isoformat()})
    return grant


def break_glass_refused(*, user, tenant, request=None, what: str = "") -> None:
    """Audit a staff attempt to read content without an active grant (R-SEC-3)."""
    record(action="transcript.read.refused", actor=user, tenant=tenant, request=request,
           data={"reason": "no active break-glass grant", "what": what[:64]})


# --- individuals' requests (R-DSR): the transcripts as a holder ----------------------------------------
def _export(tenant_id: str, customer_id: str):
    """Read and decrypted in chunks, as the copy is written out (``audit.personal_data``)."""
    rows = (Transcript.objects.filter(tenant_id=tenant_id, customer_id=customer_id).select_related("data_key")
            .order_by("created_at", "pk"))
    for row in rows.iterator(chunk_size=500):
        try:
            content = envelope.open_sealed(envelope.plaintext_key(row.data_key), str(row.tenant_id), str(row.pk),
                                           row.sealed)
        except envelope.DecryptionError:
            # Altered, or its key is gone: listed, never blocking the copy (KMS being unreachable does block it,
            # and the copy is tried again later).
            content = {"prompt": None, "reply": None, "unreadable": True}
        yield {"request_id": row.request_id, "turn": row.turn, "kind": row.kind,
               "conversation_id": row.conversation_id, "model": row.model,
               "created_at": row.created_at.isoformat(), "expires_at": row.expires_at.isoformat(),
               "prompt": content.get("prompt"), "reply": content.get("reply"),
               **({"unreadable": True} if content.get("unreadable") else {})}


def _count(tenant_id: str, customer_id: str) -> int:
    return Transcript.objects.filter(tenant_id=tenant_id, customer_id=customer_id).count()


def _erase(tenant_id: str, customer_id: str) -> int:
    deleted, _ = Transcript.objects.filter(tenant_id=tenant_id, customer_id=customer_id).delete()
    return deleted


def _rekey(tenant_id: str, customer_id: str, new_customer_id: str) -> int:
    return Transcript.objects.filter(tenant_id=tenant_id, customer_id=customer_id).update(
        customer_id=new_customer_id)


def register_holder() -> None:
    from audit.personal_data import Holder, register

    register(Holder(name="transcripts", description="Prompts and replies kept for the tenant's transcript "
                    "retention period (decrypted for the export)", export=_export, erase=_erase, rekey=_rekey,
                    count=_count, models=("audit.transcript",)))
