"""Automated decisions into the audit chain (ADM: privacy policy APP 1.7-1.9, docs/conversations.md).

The data plane puts every escalation decision of the conversation API on the ``adm:decisions`` stream as a
``core.contract.EscalationDecision`` (digests of its inputs and its outcome, never text); this control-plane job
writes each as one ``adm.escalation`` audit entry, sealed into the chain by ``audit_seal`` like any entry.

Delivery is at least once (a consumer group; entries are acknowledged after the database commit) and the entry is
written once: a decision whose id is already in the trail is acknowledged and skipped. Scheduled by Celery beat
(``inference.tasks.ingest_adm_decisions``) and, in the embedded default, by the web process's repair loop.
"""

from __future__ import annotations

import logging
import os
import socket

import redis
from django.db import transaction

from audit.models import AuditEntry
from audit.services import record
from core import contract
from core.redis import get_redis
from tenants.models import Tenant

logger = logging.getLogger("wattle.adm")

GROUP = "audit"
ACTION = "adm.escalation"
_BATCH = 200
_CLAIM_IDLE_MS = 60_000


def _consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _ensure_group(client, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _read(client, stream: str, consumer: str, start: str) -> list:
    try:
        response = client.xreadgroup(GROUP, consumer, {stream: start}, count=_BATCH)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        _ensure_group(client, stream)  # Redis restarted empty: the group went with the stream
        return []
    return [(entry_id, fields) for _stream, entries in (response or []) for entry_id, fields in entries]


def audit_data(decision: contract.EscalationDecision) -> dict:
    """What the audit entry records of a decision: identifiers, digests and the outcome; no text."""
    return {
        "decision_id": decision.decision_id, "conversation_id": decision.conversation_id, "turn": decision.turn,
        "decided_at": decision.time, "escalate": decision.escalate, "reason": decision.reason,
        "scorer": decision.scorer, "fallback": decision.fallback, "score": decision.score, "label": decision.label,
        "text_sha256": decision.text_sha256, "rule_sha256": decision.rule_sha256,
        "inputs_sha256": decision.inputs_sha256,
    }


def _store(decision: contract.EscalationDecision) -> bool:
    """One audit entry for the decision (none if it is already there, or its tenant is gone). Returns whether one
    was written."""
    tenant = Tenant.objects.filter(pk=decision.tenant).first()
    if tenant is None:
        logger.warning("dropping an escalation decision of an unknown tenant")
        return False
    with transaction.atomic():
        if AuditEntry.objects.filter(action=ACTION, tenant=tenant,
                                     data__decision_id=decision.decision_id).exists():
            return False
        record(action=ACTION, tenant=tenant, data=audit_data(decision),
               api_key=_KeyRef(decision.key_id) if decision.key_id else None)
    return True


class _KeyRef:
    """The key that made the request the decision was taken on (the audit entry's actor)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id


def adm_decisions_ingest(*, max_batches: int | None = None) -> int:
    """Write the decisions waiting on the stream into the audit trail; returns how many entries were handled."""
    client = get_redis()
    stream = contract.adm_decisions_stream_key()
    _ensure_group(client, stream)
    consumer = _consumer()
    handled = batches = 0
    _next, claimed, *_ = client.xautoclaim(stream, GROUP, consumer, min_idle_time=_CLAIM_IDLE_MS, start_id="0-0",
                                           count=_BATCH)
    while True:
        pending = claimed or _read(client, stream, consumer, "0") or _read(client, stream, consumer, ">")
        claimed = []
        if not pending:
            return handled
        for _entry_id, fields in pending:
            if not fields:
                continue
            try:
                decision = contract.EscalationDecision.decode(fields.get(b"e", b""))
            except contract.RecordError as exc:
                logger.error("dropping a malformed escalation decision: %s", exc.__class__.__name__)
                continue
            _store(decision)
        ids = [entry_id for entry_id, _ in pending]
        pipe = client.pipeline(transaction=False)
        pipe.xack(stream, GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        handled += len(ids)
        batches += 1
        if max_batches is not None and batches >= max_batches:
            return handled
