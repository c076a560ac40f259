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

from django.db import transaction

from audit.models import AuditEntry
from audit.services import record
from core import contract
from core.redis import get_redis
from core.streams import GroupReader
from tenants.models import Tenant

logger = logging.getLogger("wattle.adm")

GROUP = "audit"
ACTION = "adm.escalation"
_BATCH = 200
_CLAIM_IDLE_MS = 60_000


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
    reader = GroupReader(get_redis(), contract.adm_decisions_stream_key(), GROUP)
    reader.ensure_group()
    handled = 0
    for pending in reader.batches(count=_BATCH, claim_idle_ms=_CLAIM_IDLE_MS, max_batches=max_batches):
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
        reader.ack(ids)  # only now: the entries are committed
        handled += len(ids)
    return handled
