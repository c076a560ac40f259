"""Each tenant's data processing summary (openness, R-REG): regions, models, retention, redaction, sub-processors
and automated decisions, as a console page, as JSON and in the management API; other tenants get a 404."""

from __future__ import annotations

import pytest

from core.privacy import AUTOMATED_DECISIONS, SUBPROCESSORS
from inference.models import Backend
from tenants.models import Role
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def backends(db):
    Backend.objects.create(name="syd-7b", base_url="http://syd:8000", region="ap-southeast-2",
                           served_models=["mistral-7b"])
    Backend.objects.create(name="mel-large", base_url="http://mel:8000", region="ap-southeast-4",
                           served_models=["mistral-large", "mistral-7b"])
    Backend.objects.create(name="off", base_url="http://off:8000", region="ap-southeast-2",
                           served_models=["retired-model"], enabled=False)


def test_any_member_sees_the_page_linked_from_settings(client, acme, member_of, backends):
    sign_in(client, member_of(acme, Role.AGENT))  # the least privileged role may still read it
    settings_page = client.get(f"/t/{acme.slug}/settings/").content.decode()
    assert f'href="/t/{acme.slug}/data-processing/"' in settings_page
    assert "Sentiment-driven escalation" in settings_page  # the settings page names the automated decisions

    response = client.get(f"/t/{acme.slug}/data-processing/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Sydney (ap-southeast-2)" in page and "Melbourne (ap-southeast-4)" in page
    assert "mistral-large" in page and "retired-model" not in page
    assert "Prompts and replies are not stored." in page
    assert "Amazon Web Services" in page and "Stripe" in page
    assert "Automated quality (QA) scoring" in page


def test_json_names_regions_models_retention_redaction_and_sub_processors(owner_client, acme, backends, settings):
    acme.redaction = "restore"
    acme.save(update_fields=["redaction"])
    data = owner_client.get(f"/t/{acme.slug}/data-processing/?format=json").json()
    assert data["tenant"]["slug"] == acme.slug
    assert data["privacy_policy_version"] == settings.PRIVACY_POLICY_VERSION
    assert [r["region"] for r in data["regions"]["inference"]] == ["ap-southeast-2", "ap-southeast-4"]
    assert data["regions"]["storage"]["region"] == settings.AWS_REGION
    assert data["models"] == [{"name": "mistral-7b", "regions": ["ap-southeast-2", "ap-southeast-4"]},
                              {"name": "mistral-large", "regions": ["ap-southeast-4"]}]
    assert data["retention"]["content_stored"] is False and data["retention"]["content_days"] == 0
    assert data["redaction"]["mode"] == "restore"
    assert [p["name"] for p in data["subprocessors"]] == [p.name for p in SUBPROCESSORS]
    stripe = data["subprocessors"][1]
    assert "billing" in stripe["data"].lower() and "never prompts" in stripe["data"]
    assert [d["name"] for d in data["automated_decisions"]] == [d.name for d in AUTOMATED_DECISIONS]


def test_management_api_returns_the_same_summary(api_client, acme, bluegum, management_key, backends,
                                                 owner_client):
    key = management_key(acme, write=False)
    response = api_client.get("/api/v1/data-processing", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert response.json() == owner_client.get(f"/t/{acme.slug}/data-processing/?format=json").json()
    assert response.json()["tenant"]["slug"] == acme.slug  # the key's own tenant, never another
    assert api_client.get("/api/v1/data-processing").status_code == 401


def test_another_tenant_gets_a_404_and_anonymous_a_sign_in(client, owner_client, acme, bluegum):
    anonymous = client.get(f"/t/{acme.slug}/data-processing/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    client = owner_client
    assert client.get(f"/t/{bluegum.slug}/data-processing/").status_code == 404
    assert client.get(f"/t/{bluegum.slug}/data-processing/?format=json").status_code == 404
    assert client.get("/t/no-such-tenant/data-processing/").status_code == 404
    assert client.post(f"/t/{acme.slug}/data-processing/").status_code == 405


def test_retention_is_described_when_a_tenant_keeps_content(alice, acme):
    from portal.data_processing import data_processing_summary

    acme.retention_days = 30  # the setting another change adds; the summary reads it when present
    retention = data_processing_summary(tenant=acme)["retention"]
    assert retention["content_stored"] is True and "30 days" in retention["description"]
