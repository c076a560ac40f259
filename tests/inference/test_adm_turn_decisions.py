"""ADM (privacy policy APP 1.7-1.9): every customer turn's escalation decision, escalated or not, is recorded
with its inputs' digest when the conversation is recorded; one entry per conversation, no text, written once."""

from __future__ import annotations

import json
import time

import pytest

from audit.models import AuditEntry
from core import contract
from inference import analytics

pytestmark = pytest.mark.django_db


def _closed(tenant, *, escalation_turn=None) -> contract.ClosedConversation:
    turns = (
        contract.ConversationTurn(role="user", text="My bill is wrong again.", time=1.0, sentiment=-0.6,
                                  label="negative", inputs_sha256="a" * 64),
        contract.ConversationTurn(role="assistant", text="Let me check that.", time=2.0, request_id="req_1"),
        contract.ConversationTurn(role="user", text="I want to speak to a human.", time=3.0, sentiment=-0.2,
                                  label="negative", inputs_sha256="b" * 64),
    )
    return contract.ClosedConversation(
        conversation_id="conv_adm_1", tenant=str(tenant.pk), key_id="k3y", model="m", channel="webchat",
        language="en-AU", opened=time.time() - 60, closed=time.time(), turns=turns, customer_id="crm-1",
        escalated=escalation_turn is not None, escalation_reason="trigger_phrase" if escalation_turn else "",
        escalation_turn=escalation_turn)


def test_each_customer_turn_decision_is_recorded_once_with_digests_and_no_text(acme):
    closed = _closed(acme, escalation_turn=2)
    analytics.conversation_record(tenant=acme, closed=closed)
    analytics.conversation_record(tenant=acme, closed=closed)  # a second delivery
    entry = AuditEntry.objects.get(action="adm.sentiment_decisions")
    assert entry.tenant_id == acme.pk
    decisions = entry.data["decisions"]
    assert [(d["turn"], d["inputs_sha256"], d["escalated"]) for d in decisions] == [
        (0, "a" * 64, False), (2, "b" * 64, True)]
    assert decisions[0]["score"] == -0.6 and decisions[0]["label"] == "negative"
    text = json.dumps(entry.data)
    assert "bill" not in text and "human" not in text and "crm-1" not in text
