"""Post-call analytics from a real conversation: turns through the conversation API on the running portal, close,
then the ingest and the analysis as the workers run them, and the result on the console page."""

from __future__ import annotations

import httpx
import pytest
from django.test import Client
from django.urls import reverse

from core.keys import ANALYTICS_KEY_ID
from inference import analytics
from inference.models import Conversation, ConversationAnalysis
from tests.conftest import ingested, sign_in

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def bridge():
    from inference.analytics_dispatch import bridge as process_bridge

    process_bridge.close()
    yield process_bridge
    process_bridge.close()


def test_a_closed_conversation_is_recorded_analysed_and_shown(gateway_ready, acme, unthrottled, issue_key, bridge,
                                                              member_of):
    from billing.services import prices_publish

    prices_publish()
    acme.analytics_sample_percent = 100
    acme.save(update_fields=["analytics_sample_percent"])
    unthrottled(acme)
    key = issue_key(acme)
    headers = {"Authorization": f"Bearer {key}"}
    base = gateway_ready.base_url
    first = httpx.post(f"{base}/v1/conversation", headers=headers, timeout=30, json={
        "message": "/echo My bill is wrong and I'm really annoyed", "model": MODEL, "channel": "sms",
        "customer_id": "cust-9", "language": "en-AU"})
    assert first.status_code == 200, first.text
    cid = first.json()["conversation_id"]
    second = httpx.post(f"{base}/v1/conversation", headers=headers, timeout=30,
                        json={"message": "/echo Thanks, that fixed it", "conversation_id": cid})
    assert second.status_code == 200, second.text
    assert httpx.post(f"{base}/v1/conversations/{cid}/close", headers=headers, timeout=30).status_code == 200

    assert analytics.conversations_ingest() == 1  # on_commit runs at once outside a test transaction
    conversation = Conversation.objects.get(tenant=acme, conversation_id=cid)
    assert (conversation.channel, conversation.customer_id, conversation.turn_count) == ("sms", "cust-9", 4)
    assert len(conversation.sentiment_trail) == 2 and conversation.sentiment_trail[0] < 0
    analysis = ConversationAnalysis.objects.get(conversation=conversation)
    assert analysis.status == "done" and analysis.qa_score is not None
    assert analysis.model == MODEL

    bridge.close()
    events = ingested(3)  # two turns and the analysis, each billed
    assert [e.key_id for e in events].count(ANALYTICS_KEY_ID) == 1

    client = sign_in(Client(), member_of(acme, "admin"))
    page = client.get(reverse("tenant_conversation_detail", args=[acme.slug, conversation.pk]))
    assert page.status_code == 200 and str(analysis.qa_score).encode() in page.content
