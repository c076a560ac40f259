"""The tenant's retention and conversation settings reach the data plane in its tenant record."""

from __future__ import annotations

from billing import snapshot
from core import contract
from core.redis import get_redis


def test_a_tenant_record_publishes_retention_and_conversation_settings(acme):
    acme.retention_days = 30
    acme.escalation_threshold = -0.25
    acme.escalation_turns = 3
    acme.escalation_phrases = "  Supervisor \n\nSPEAK TO A HUMAN\n"
    acme.sentiment_scorer = "embedding"
    acme.sentiment_model = "mistral-embed"
    acme.analytics_sample_percent = 40
    acme.save()
    snapshot.publish_tenant(acme)
    record = contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(acme.pk))))
    assert record.retention_days == 30
    assert (record.escalation_threshold, record.escalation_turns) == (-0.25, 3)
    assert record.escalation_phrases == ("supervisor", "speak to a human")
    assert (record.sentiment_scorer, record.sentiment_model, record.analytics_sample) == (
        "embedding", "mistral-embed", 40)


def test_a_new_tenant_keeps_nothing_and_escalates_on_the_default_rule(acme):
    snapshot.publish_tenant(acme)
    record = contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(acme.pk))))
    assert record.retention_days == 0
    assert "speak to a human" in record.escalation_phrases
    assert record.analytics_sample == 10
