"""API keys in the console: created with scopes, models, expiry and limits; the secret shown once; rotation
with a grace period; revocation; every action audited and published for the data plane."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone

from audit.models import AuditEntry
from billing.models import UsageEvent
from core.contract import api_key_record_key
from core.redis import get_redis
from inference.gateway.auth import KeyRecord
from inference.models import Backend
from tenants import keys
from tenants.models import ApiKey
from tenants.services import api_key_rotate
from tests.conftest import published_caller

pytestmark = pytest.mark.django_db


def _record(key_id: str) -> dict:
    return orjson.loads(get_redis().get(api_key_record_key(key_id)))


def test_key_is_created_with_every_field_and_shown_once(owner_client, acme, unthrottled,
                                                        django_capture_on_commit_callbacks):
    unthrottled(acme)  # limits above the Trial plan's, which a key may not exceed
    Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000",
                           served_models=["mistral-large", "mistralai/Mistral-7B-Instruct-v0.3", "other"])
    tomorrow_plus = (timezone.localdate() + timedelta(days=30)).isoformat()
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/keys/new/", {
            "name": "IVR production", "scopes": ["inference", "management:read"],
            "allowed_models": ["mistralai/Mistral-7B-Instruct-v0.3", "mistral-large"], "expires_on": tomorrow_plus,
            "rpm_limit": "600", "tpm_limit": "400000", "max_concurrent": "38", "daily_token_limit": "5000000",
            "monthly_token_budget": "90000000", "monthly_spend_cap_aud": "1500.50",
        })
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    secret = response.context["secret"]
    api_key = ApiKey.objects.get(tenant=acme)
    assert secret.startswith(f"wtl_{api_key.key_id}_")
    assert api_key.scopes == ["inference", "management:read"]
    assert api_key.allowed_models == ["mistralai/Mistral-7B-Instruct-v0.3", "mistral-large"]
    assert timezone.localtime(api_key.expires_at).date().isoformat() == tomorrow_plus
    assert (api_key.rpm_limit, api_key.tpm_limit, api_key.max_concurrent) == (600, 400000, 38)
    assert (api_key.daily_token_limit, api_key.monthly_token_budget) == (5000000, 90000000)
    assert api_key.monthly_spend_cap_aud == Decimal("1500.50")
    assert api_key.created_by.email == "alice@acme.example"
    # Only the keyed hash is stored, and no page shows the secret again.
    assert secret.split("_", 2)[2] not in api_key.secret_hash
    for path in (f"/t/{acme.slug}/keys/", f"/t/{acme.slug}/keys/{api_key.key_id}/"):
        assert secret not in owner_client.get(path).content.decode()
    entry = AuditEntry.objects.get(action="api_key.create")
    assert entry.data["key_id"] == api_key.key_id and secret not in str(entry.data)
    assert _record(api_key.key_id)["models"] == api_key.allowed_models


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"expires_on": "2001-01-01"}, "expires_on"),
        ({"expires_on": "next tuesday"}, "expires_on"),
        ({"rpm_limit": "-5"}, "rpm_limit"),
        ({"tpm_limit": "lots"}, "tpm_limit"),
        ({"monthly_spend_cap_aud": "12.345"}, "monthly_spend_cap_aud"),
        ({"allowed_models": "model with spaces"}, "allowed_models"),
    ],
)
def test_malformed_key_form_shows_field_errors(owner_client, acme, data, field):
    response = owner_client.post(f"/t/{acme.slug}/keys/new/", {"name": "ok", "scopes": ["inference"], **data})
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not ApiKey.objects.exists()


def test_key_list_shows_the_columns_and_last_used_from_usage_events(owner_client, acme, issue_key):
    key_id = keys.parse_key(issue_key(acme, name="ivr"))[0]
    used_at = timezone.now() - timedelta(hours=2)
    UsageEvent.objects.create(request_id="req_1", tenant=acme, key_id=key_id, endpoint="chat.completions",
                              model="m", status=200, created_at=used_at)
    body = owner_client.get(f"/t/{acme.slug}/keys/").content.decode()
    for column in ("Name", "Key id", "Scopes", "Created by", "Created", "Last used", "Expires", "Status"):
        assert f">{column}<" in body
    assert f"wtl_{key_id}" in body and timezone.localtime(used_at).strftime("%H:%M") in body


def test_key_list_filters_by_status(owner_client, acme, issue_key, django_capture_on_commit_callbacks):
    issue_key(acme, name="keep")
    gone = keys.parse_key(issue_key(acme, name="gone"))[0]
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/t/{acme.slug}/keys/{gone}/revoke/")
    active = owner_client.get(f"/t/{acme.slug}/keys/?status=active").content.decode()
    revoked = owner_client.get(f"/t/{acme.slug}/keys/?status=revoked").content.decode()
    assert "keep" in active and ">gone<" not in active
    assert ">gone<" in revoked and ">keep<" not in revoked
    assert owner_client.get(f"/t/{acme.slug}/keys/?status=bogus").status_code == 200


def test_revoke_publishes_at_once_and_is_audited(owner_client, acme, issue_key, django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/keys/{key_id}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "badge-revoked" in response.content.decode()
    assert _record(key_id)["revoked"] is True
    assert AuditEntry.objects.filter(action="api_key.revoke", data__key_id=key_id).count() == 1


def test_rotation_keeps_the_old_secret_for_the_grace_period(owner_client, acme, issue_key,
                                                            django_capture_on_commit_callbacks):
    old = issue_key(acme)
    key_id, old_secret = keys.parse_key(old)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/keys/{key_id}/rotate/", {"grace": "3600"})
    assert response.status_code == 200
    new = response.context["secret"]
    new_secret = keys.parse_key(new)[1]
    assert new.startswith(f"wtl_{key_id}_") and new != old
    record = published_caller(key_id)
    assert record.secret_matches(keys.hash_secret(new_secret))
    assert record.secret_matches(keys.hash_secret(old_secret))
    assert 3500 < record.prev_expires - time.time() <= 3600
    entry = AuditEntry.objects.get(action="api_key.rotate")
    assert entry.data == {"key_id": key_id, "grace_seconds": 3600}


def test_rotation_with_no_grace_stops_the_old_secret_now(acme, issue_key, django_capture_on_commit_callbacks):
    old = issue_key(acme)
    key_id, old_secret = keys.parse_key(old)
    with django_capture_on_commit_callbacks(execute=True):
        issued = api_key_rotate(api_key=ApiKey.objects.get(key_id=key_id), grace=timedelta(0))
    record = published_caller(key_id)
    assert not record.secret_matches(keys.hash_secret(old_secret))
    assert record.secret_matches(keys.hash_secret(keys.parse_key(issued.plaintext)[1]))


def test_previous_secret_stops_after_its_expiry():
    digest = keys.hash_secret("old")
    record = KeyRecord(key_id="k", tenant="t", tenant_status="active", hash=keys.hash_secret("new"),
                       scopes=frozenset(), models=frozenset(), expires=None, revoked=False,
                       prev_hash=digest, prev_expires=time.time() - 1)
    assert not record.secret_matches(digest)


@pytest.mark.parametrize("grace", ["", "-1", "31536000", "soon"])
def test_malformed_rotation_is_refused(owner_client, acme, issue_key, grace):
    key_id = keys.parse_key(issue_key(acme))[0]
    response = owner_client.post(f"/t/{acme.slug}/keys/{key_id}/rotate/", {"grace": grace})
    assert response.status_code == 400 and "grace" in response.context["form"].errors
    assert not AuditEntry.objects.filter(action="api_key.rotate").exists()


def test_a_revoked_key_cannot_be_rotated(owner_client, acme, issue_key, django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/t/{acme.slug}/keys/{key_id}/revoke/")
    response = owner_client.post(f"/t/{acme.slug}/keys/{key_id}/rotate/", {"grace": "0"}, follow=True)
    assert "cannot be rotated" in response.content.decode()
    assert not AuditEntry.objects.filter(action="api_key.rotate").exists()


def test_unknown_key_id_is_404(owner_client, acme):
    assert owner_client.get(f"/t/{acme.slug}/keys/doesnotexist/").status_code == 404
    assert owner_client.post(f"/t/{acme.slug}/keys/doesnotexist/revoke/").status_code == 404
