"""The tenant's conversation settings (escalation rule, sentiment scorer, analytics sample): set by owners and
admins in the settings page's "Conversations" section, audited, and published in the tenant's record for the
conversation API (docs/conversations.md)."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEntry
from core import ccaas, contract
from core.redis import get_redis
from tenants.models import Role
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db

VALID = {"section": "conversations", "escalation_threshold": "-0.3", "escalation_turns": "3",
         "escalation_phrases": "Supervisor\n\n  speak   to a HUMAN  \n", "sentiment_scorer": "lexicon",
         "sentiment_model": "", "analytics_sample_percent": "25"}


def _published(tenant) -> contract.TenantRecord:
    return contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(tenant.pk))))


def test_owner_sets_the_rule_it_is_audited_and_published(owner_client, acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/settings/", VALID)
    assert response.status_code == 302
    acme.refresh_from_db()
    assert (acme.escalation_threshold, acme.escalation_turns, acme.analytics_sample_percent) == (-0.3, 3, 25)
    assert acme.escalation_phrases == "Supervisor\nspeak to a HUMAN"
    record = _published(acme)
    assert record.escalation_phrases == ("supervisor", "speak to a human")
    assert (record.escalation_threshold, record.escalation_turns, record.analytics_sample) == (-0.3, 3, 25)
    entry = AuditEntry.objects.get(action="tenant.conversations.update", tenant_id=acme.pk)
    changed = entry.data["changed"]
    assert changed["escalation_turns"] == {"from": ccaas.DEFAULT_ESCALATION_TURNS, "to": 3}
    assert changed["escalation_phrases"] == {"from": len(ccaas.DEFAULT_ESCALATION_PHRASES), "to": 2}
    assert "Supervisor" not in str(entry.data)  # the phrases by count


def test_an_admin_may_set_it_too(acme, member_of):
    admin = sign_in(Client(), member_of(acme, Role.ADMIN))
    assert admin.post(f"/t/{acme.slug}/settings/", VALID).status_code == 302
    acme.refresh_from_db()
    assert acme.escalation_turns == 3


def test_the_settings_page_shows_the_section(owner_client, acme):
    page = owner_client.get(f"/t/{acme.slug}/settings/").content.decode()
    assert 'id="conversations"' in page and 'name="escalation_phrases"' in page
    assert "speak to a human" in page and 'value="lexicon"' in page


def test_saving_the_same_settings_writes_no_audit_entry(owner_client, acme):
    same = {**VALID, "escalation_threshold": str(acme.escalation_threshold),
            "escalation_turns": str(acme.escalation_turns), "escalation_phrases": acme.escalation_phrases,
            "analytics_sample_percent": str(acme.analytics_sample_percent)}
    assert owner_client.post(f"/t/{acme.slug}/settings/", same).status_code == 302
    assert not AuditEntry.objects.filter(action="tenant.conversations.update").exists()


@pytest.mark.parametrize(("changes", "field"), [
    ({"escalation_threshold": "-1.5"}, "escalation_threshold"),
    ({"escalation_threshold": "very"}, "escalation_threshold"),
    ({"escalation_turns": "21"}, "escalation_turns"),
    ({"analytics_sample_percent": "101"}, "analytics_sample_percent"),
    ({"sentiment_scorer": "tea leaves"}, "sentiment_scorer"),
    ({"sentiment_scorer": "embedding", "sentiment_model": ""}, "sentiment_model"),
    ({"escalation_phrases": "\n".join(f"phrase {n}" for n in range(51))}, "escalation_phrases"),
    ({"escalation_phrases": "x" * 101}, "escalation_phrases"),
])
def test_invalid_settings_are_a_400_with_the_form_error_and_change_nothing(owner_client, acme, changes, field):
    response = owner_client.post(f"/t/{acme.slug}/settings/", {**VALID, **changes})
    assert response.status_code == 400
    assert response.context["conversation_form"].errors[field]
    acme.refresh_from_db()
    assert acme.escalation_turns == ccaas.DEFAULT_ESCALATION_TURNS


def test_a_developer_cannot_change_it(acme, member_of):
    developer = sign_in(Client(), member_of(acme, Role.DEVELOPER))
    assert developer.post(f"/t/{acme.slug}/settings/", VALID).status_code == 403
    acme.refresh_from_db()
    assert acme.escalation_turns == ccaas.DEFAULT_ESCALATION_TURNS


def test_another_tenants_member_gets_a_404(owner_client, bluegum):
    assert owner_client.post(f"/t/{bluegum.slug}/settings/", VALID).status_code == 404
    bluegum.refresh_from_db()
    assert bluegum.escalation_turns == ccaas.DEFAULT_ESCALATION_TURNS


def test_signed_out_is_sent_to_sign_in(acme):
    response = Client().post(f"/t/{acme.slug}/settings/", VALID)
    assert response.status_code == 302 and "login" in response["Location"]


@pytest.mark.parametrize("phrases", [
    "\n".join(f"phrase {i}" for i in range(ccaas.MAX_ESCALATION_PHRASES + 1)),
    "x" * (ccaas.MAX_ESCALATION_PHRASE_CHARS + 1),
    "speak to a\x00human",
])
def test_the_service_bounds_the_phrases_whoever_calls_it(acme, phrases):
    """The data plane compiles the phrases into one pattern tried on every customer turn: the service refuses a list
    beyond the form's bounds too (a caller other than the console form can't hand it ten thousand)."""
    from django.core.exceptions import ValidationError

    from tenants.models import Tenant
    from tenants.services import tenant_conversation_settings_set

    before = Tenant.objects.get(pk=acme.pk).escalation_phrases
    with pytest.raises(ValidationError) as raised:
        tenant_conversation_settings_set(tenant=acme, escalation_phrases=phrases)
    assert "escalation_phrases" in raised.value.message_dict
    assert Tenant.objects.get(pk=acme.pk).escalation_phrases == before
