"""Conversations' part of individuals' requests (``audit.personal_data``): the closed conversations a tenant's end
customer had through the conversation API, and their post-call analyses.

A copy has each conversation's channel, language, times, turn count, sentiment scores, escalation and metadata,
and each analysis's summary, QA scores and reasons. Erasure blanks what was derived from the content (summaries,
reasons, metadata; ``inference.analytics.conversation_content_erase``) and de-identifies the rest (the customer
id becomes ``~erased``, which no caller can send), keeping the scores the tenant's QA statistics count. The turns
themselves are not here: transcripts are audit's holder, and an open conversation's turns live in the data
plane's store until it closes.
"""

from __future__ import annotations

import time

from django.db import transaction

from audit.personal_data import Holder, register
from inference.analytics import ERASED_CUSTOMER, conversation_content_erase, erasure_note
from inference.models import Conversation, ConversationAnalysis

ERASED = ERASED_CUSTOMER


def _conversations(tenant_id: str, customer_id: str):
    return Conversation.objects.filter(tenant_id=tenant_id, customer_id=customer_id)


def conversations_export(tenant_id: str, customer_id: str) -> list[dict]:
    conversations = list(_conversations(tenant_id, customer_id).order_by("opened_at", "pk"))
    analyses: dict = {}
    for analysis in ConversationAnalysis.objects.filter(conversation__in=conversations).order_by("created_at"):
        analyses.setdefault(analysis.conversation_id, []).append({
            "status": analysis.status, "summary": analysis.summary, "qa_score": analysis.qa_score,
            "rubric": analysis.rubric, "model": analysis.model,
            "created_at": analysis.created_at.isoformat(),
        })
    return [{
        "conversation_id": c.conversation_id, "channel": c.channel, "language": c.language, "model": c.model,
        "opened_at": c.opened_at.isoformat(), "closed_at": c.closed_at.isoformat(), "turn_count": c.turn_count,
        "sentiment_trail": c.sentiment_trail, "escalated": c.escalated, "escalation_reason": c.escalation_reason,
        "metadata": c.metadata, "analyses": analyses.get(c.pk, []),
    } for c in conversations]


def conversations_erase(tenant_id: str, customer_id: str) -> int:
    # Conversations closed by now but still on the stream are de-identified when they arrive (once committed).
    at = time.time()
    transaction.on_commit(lambda: erasure_note(tenant_id=tenant_id, customer_id=customer_id, at=at))
    conversations = _conversations(tenant_id, customer_id)
    ids = list(conversations.values_list("conversation_id", flat=True))
    if not ids:
        return 0
    tenant = conversations.first().tenant
    conversation_content_erase(tenant=tenant, conversation_ids=ids)
    return conversations.update(customer_id=ERASED)


def conversations_count(tenant_id: str, customer_id: str) -> int:
    return _conversations(tenant_id, customer_id).count()


def conversations_rekey(tenant_id: str, customer_id: str, new_customer_id: str) -> int:
    return _conversations(tenant_id, customer_id).update(customer_id=new_customer_id)


def register_holder() -> None:
    register(Holder(
        name="conversations",
        description="Conversations through the conversation API (channel, language, times, sentiment scores, "
                    "escalation, metadata) and their post-call analyses (summary, QA scores and reasons).",
        export=conversations_export, erase=conversations_erase, rekey=conversations_rekey,
        count=conversations_count, models=("inference.conversation",)))
