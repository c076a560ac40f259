"""The one way to write to the audit trail, and the sealer that chains it (docs/audit.md)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import connection, models, transaction

from audit import chain
from audit.models import USER_AGENT_MAX, AuditEntry
from core.proxies import request_client_ip

logger = logging.getLogger("wattle.audit")

# pg_try_advisory_xact_lock key: one sealer at a time across every process ("WTLAUDIT" in ASCII).
AUDIT_SEAL_LOCK = 0x57544C4155444954
SEAL_BATCH = 5_000

def record(
    *,
    action: str,
    actor=None,
    tenant=None,
    target: models.Model | None = None,
    data: dict[str, Any] | None = None,
    request=None,
    api_key=None,
) -> AuditEntry:
    """Append an audit entry. Call it inside the service's transaction so the entry and the change commit
    together. ``data`` carries identifiers and settings, never secrets or end-customer content.

    The entry is inserted unchained (no lock, no read of the chain head: audited writes never queue behind each
    other) and ``audit_seal`` chains it within seconds of its commit. The actor is a user, an API key (given, or
    the key that authenticated ``request`` on the management API), or the system."""
    if actor is None and request is not None and getattr(request, "user", None) is not None:
        actor = request.user if request.user.is_authenticated else None
    key_id = getattr(api_key, "key_id", "") or ""
    if not key_id and request is not None:
        # DRF's request carries the key as .auth; the Django request under it is tagged by the key authenticator.
        key_id = getattr(getattr(request, "auth", None), "key_id", None) or getattr(request, "wattle_api_key_id", "")
    if actor is not None:
        kind, label = AuditEntry.ActorKind.USER, getattr(actor, "email", "") or str(actor)
    elif key_id:
        kind, label = AuditEntry.ActorKind.API_KEY, f"key {key_id}"
    else:
        kind, label = AuditEntry.ActorKind.SYSTEM, "system"
    meta = getattr(request, "META", None) or {}
    return AuditEntry.objects.create(
        action=action,
        actor_kind=kind,
        actor=actor,
        actor_label=label,
        api_key_id=str(key_id or "")[:32],
        tenant=tenant,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        ip=request_client_ip(request),
        user_agent=str(meta.get("HTTP_USER_AGENT", ""))[:USER_AGENT_MAX],
        request_id=str(getattr(request, "request_id", "") or "")[:64],
        data=data or {},
    )


_SELECT_UNSEALED = (
    f"SELECT {', '.join(chain.FIELDS[1:])} FROM audit_auditentry WHERE hash = '' ORDER BY id LIMIT %s"  # noqa: S608
)


def _head() -> tuple[int, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, hash FROM audit_auditentry WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1")
        row = cursor.fetchone()
    return (int(row[0]), row[1]) if row else (0, chain.GENESIS)


def audit_seal(*, batch: int = SEAL_BATCH, max_batches: int | None = None) -> int:
    """Chain every committed unsealed entry; returns how many it sealed.

    The chain is in sealing order: each run takes the committed rows whose hash is empty, in id order, and gives
    them the next ``seq`` numbers. A transaction that took a lower id but commits after a higher one was sealed
    is not lost: its row is still unsealed at the next run and joins the chain then, further along. One sealer
    runs at a time (an advisory lock on PostgreSQL; SQLite has one writer). Each batch is one transaction, so a
    crash leaves the chain whole up to the last batch."""
    sealed = 0
    while max_batches is None or max_batches > 0:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [AUDIT_SEAL_LOCK])
                    if not cursor.fetchone()[0]:
                        return sealed  # another sealer is at work
            seq, prev = _head()
            with connection.cursor() as cursor:
                cursor.execute(_SELECT_UNSEALED, [batch])
                rows = cursor.fetchall()
            updates = []
            for values in rows:
                seq += 1
                digest = chain.link_values(prev, (seq, *values))
                updates.append((seq, prev, digest, values[0]))
                prev = digest
            if updates:
                with connection.cursor() as cursor:
                    cursor.executemany(
                        "UPDATE audit_auditentry SET seq = %s, prev_hash = %s, hash = %s WHERE id = %s AND hash = ''",
                        updates,
                    )
        sealed += len(updates)
        if len(rows) < batch:
            return sealed
        if max_batches is not None:
            max_batches -= 1
    return sealed


def audit_jobs() -> None:
    """What the beat (or the embedded loop) runs: seal, then archive a segment when one is due."""
    from audit.archive import segment_seal_due

    started = time.monotonic()
    count = audit_seal()
    if count:
        logger.info("sealed %s audit entries in %.3fs", count, time.monotonic() - started)
    segment_seal_due()


def audit_exported(*, actor, tenant, request, filters: dict[str, str], fmt: str, count: int,
                   truncated: bool) -> None:
    """Exports are security events (R-AUD-4): who took which part of the trail away."""
    with transaction.atomic():
        record(action="audit.exported", actor=actor, tenant=tenant, request=request,
               data={"format": fmt, "count": count, "truncated": truncated, "filters": filters})
