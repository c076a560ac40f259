"""Individuals' requests reach conversations (R-DSR-1, R-DSR-2): a copy holds the customer's conversations and
their analyses; erasure blanks what came from the content and de-identifies the rest; correction moves them;
another tenant's conversations are never touched."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit import privacy_requests as dsr
from inference.models import Conversation, ConversationAnalysis
from inference.personal_data import ERASED

pytestmark = pytest.mark.django_db


def _conversation(tenant, customer: str) -> Conversation:
    closed = timezone.now()
    conversation = Conversation.objects.create(
        tenant=tenant, conversation_id=f"conv_{uuid.uuid4().hex}", key_id="k3y", model="m", channel="whatsapp",
        language="en-AU", customer_id=customer, turn_count=4, sentiment_trail=[0.1, -0.7, -0.8],
        escalated=True, escalation_reason="negative_sentiment", opened_at=closed - timedelta(minutes=5),
        closed_at=closed, metadata={"queue": "billing"}, sampled=True)
    ConversationAnalysis.objects.create(
        tenant=tenant, conversation=conversation, status="done", summary="Customer disputed a roaming charge.",
        qa_score=72, rubric={"empathy": {"score": 60, "reason": "Apologised late."}}, rubric_version="1",
        model="m", content_hash=uuid.uuid4().hex + uuid.uuid4().hex)
    return conversation


def _open(tenant, kind, **kwargs):
    return dsr.privacy_request_open(tenant=tenant, customer_id="crm-7", kind=kind, channel="console", **kwargs)


def test_a_copy_holds_the_customers_conversations_and_analyses_only(acme, bluegum):
    mine = _conversation(acme, "crm-7")
    _conversation(acme, "crm-8")
    _conversation(bluegum, "crm-7")
    held = dsr.privacy_request_export(privacy_request=_open(acme, "access"))["holdings"]["conversations"]
    assert [c["conversation_id"] for c in held] == [mine.conversation_id]
    assert held[0]["analyses"][0]["summary"] == "Customer disputed a roaming charge."
    assert held[0]["sentiment_trail"] == [0.1, -0.7, -0.8]


def test_erasure_blanks_content_and_de_identifies_the_rest(acme, bluegum):
    mine = _conversation(acme, "crm-7")
    theirs = _conversation(bluegum, "crm-7")
    erase = _open(acme, "erase")
    dsr.privacy_request_erase(privacy_request=erase)
    assert erase.outcome["conversations"] == 1
    mine.refresh_from_db()
    analysis = mine.analyses.get()
    assert (mine.customer_id, mine.metadata, analysis.summary) == (ERASED, {}, "")
    assert analysis.rubric["empathy"] == {"score": 60, "reason": ""}
    assert analysis.qa_score == 72  # the tenant's QA statistics keep the number
    theirs.refresh_from_db()
    assert theirs.customer_id == "crm-7" and theirs.analyses.get().summary


def test_correction_moves_the_conversations(acme):
    _conversation(acme, "crm-7")
    dsr.privacy_request_correct(privacy_request=_open(acme, "correct", new_customer_id="crm-77"))
    assert Conversation.objects.get().customer_id == "crm-77"
