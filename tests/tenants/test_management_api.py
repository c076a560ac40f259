"""The management API's behaviour: key authentication, scopes, one error shape, pagination, filtering,
throttling, and an OpenAPI schema that validates."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone

from audit.models import AuditEntry
from billing.models import UsageEvent
from inference.models import Backend
from tenants import keys
from tenants.models import ApiKey, Invitation, Role
from tenants.services import api_key_revoke, api_key_rotate, tenant_set_status

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def _auth(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["message"]
    if code:
        assert error["code"] == code, error
    return error


def test_create_key_returns_the_secret_once(api_client, acme, management_key, unthrottled,
                                           django_capture_on_commit_callbacks):
    unthrottled(acme)  # the key's limits are above the Trial plan's
    Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000", served_models=["m-7b"])
    key = management_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post("/api/v1/keys", {
            "name": "ivr", "scopes": ["inference"], "allowed_models": ["m-7b"],
            "expires_at": (timezone.now() + timedelta(days=7)).isoformat(),
            "limits": {"rpm_limit": 60, "monthly_spend_cap_aud": "99.50"},
        }, format="json", **_auth(key))
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["secret"].startswith(f"wtl_{body['key_id']}_")
    assert body["limits"]["rpm_limit"] == 60 and body["limits"]["monthly_spend_cap_aud"] == "99.50"
    assert body["created_by"] is None and body["status"] == "active"
    again = api_client.get(f"/api/v1/keys/{body['key_id']}", **_auth(key)).json()
    assert "secret" not in again and body["secret"] not in json.dumps(again)
    entry = AuditEntry.objects.get(action="api_key.create", data__key_id=body["key_id"])
    assert entry.data["via_api_key"] == key.split("_")[1]  # made by a key: the audit entry names it


def test_rotate_and_revoke_by_api(api_client, acme, management_key, issue_key, django_capture_on_commit_callbacks):
    key = management_key(acme)
    target = keys.parse_key(issue_key(acme))[0]
    with django_capture_on_commit_callbacks(execute=True):
        rotated = api_client.post(f"/api/v1/keys/{target}/rotate", {"grace_seconds": 600}, format="json",
                                  **_auth(key)).json()
    assert rotated["secret"].startswith(f"wtl_{target}_") and rotated["previous_secret_expires_at"]
    with django_capture_on_commit_callbacks(execute=True):
        revoked = api_client.delete(f"/api/v1/keys/{target}", **_auth(key)).json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    _error(api_client.post(f"/api/v1/keys/{target}/rotate", {}, format="json", **_auth(key)), 400)


def test_a_rotated_management_key_works_with_both_secrets_until_the_grace_ends(api_client, acme, management_key):
    old = management_key(acme)
    api_key = ApiKey.objects.get(key_id=keys.parse_key(old)[0])
    new = api_key_rotate(api_key=api_key, grace=timedelta(minutes=5)).plaintext
    assert api_client.get("/api/v1/tenant", **_auth(old)).status_code == 200
    assert api_client.get("/api/v1/tenant", **_auth(new)).status_code == 200
    ApiKey.objects.filter(pk=api_key.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    _error(api_client.get("/api/v1/tenant", **_auth(old)), 401, "invalid_api_key")


@pytest.mark.parametrize(
    "header",
    ["Bearer wtl_nope", "Bearer sk-openai-style", "Bearer wtl_abcdefghijkl_wrongsecret", "Basic dXNlcjpwYXNz",
     "Bearer"],
)
def test_bad_credentials_are_401(api_client, acme, header):
    response = api_client.get("/api/v1/tenant", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401


def test_revoked_expired_and_suspended_keys(api_client, acme, management_key):
    revoked = management_key(acme)
    api_key_revoke(api_key=ApiKey.objects.get(key_id=revoked.split("_")[1]))
    assert "revoked" in _error(api_client.get("/api/v1/tenant", **_auth(revoked)), 401)["message"]
    expired = management_key(acme)
    ApiKey.objects.filter(key_id=expired.split("_")[1]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "expired" in _error(api_client.get("/api/v1/tenant", **_auth(expired)), 401)["message"]
    live = management_key(acme)
    tenant_set_status(tenant=acme, status="suspended", reason="unpaid")
    _error(api_client.get("/api/v1/tenant", **_auth(live)), 402, "account_suspended")


def test_malformed_json_and_media_types(api_client, acme, management_key):
    key = management_key(acme)
    response = api_client.generic("POST", "/api/v1/keys", "{not json", content_type="application/json", **_auth(key))
    _error(response, 400, "invalid_json")
    response = api_client.generic("POST", "/api/v1/keys", "name=x", content_type="application/x-www-form-urlencoded",
                                  **_auth(key))
    _error(response, 415, "unsupported_media_type")
    _error(api_client.put("/api/v1/keys", {}, format="json", **_auth(key)), 405, "method_not_allowed")
    _error(api_client.get("/api/v1/nothing-here", **_auth(key)), 404, "not_found")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/v1/keys", {}, "name"),
        ("/api/v1/keys", {"name": "  "}, "name"),
        ("/api/v1/keys", {"name": "x", "scopes": ["admin"]}, "scopes.0"),
        ("/api/v1/keys", {"name": "x", "scopes": []}, "scopes"),
        ("/api/v1/keys", {"name": "x", "scopes": "inference"}, "scopes"),
        ("/api/v1/keys", {"name": "x", "expires_at": "yesterday"}, "expires_at"),
        ("/api/v1/keys", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ("/api/v1/keys", {"name": "x", "allowed_models": ["has space"]}, "allowed_models"),
        ("/api/v1/keys", {"name": "x", "limits": {"rpm_limit": 0}}, "limits.rpm_limit"),
        ("/api/v1/keys", {"name": "x", "limits": {"monthly_spend_cap_aud": "abc"}}, "limits.monthly_spend_cap_aud"),
        ("/api/v1/keys", ["not", "an", "object"], None),
        ("/api/v1/invitations", {"email": "nope", "role": "developer"}, "email"),
        ("/api/v1/invitations", {"email": "a@b.example", "role": "king"}, "role"),
        ("/api/v1/invitations", {"email": "a@b.example", "role": "owner"}, None),
    ],
)
def test_malformed_writes_get_a_clear_400(api_client, acme, management_key, path, body, param):
    key = management_key(acme)
    error = _error(api_client.post(path, body, format="json", **_auth(key)),
                   403 if body == {"email": "a@b.example", "role": "owner"} else 400)
    if param:
        assert error["param"] == param and param.split(".")[0] in error["message"]
    assert not ApiKey.objects.filter(name="x").exists() and not Invitation.objects.exists()


def test_tenant_update_validates_the_abn(api_client, alice, acme):
    from tests.conftest import add_totp, sign_in

    add_totp(alice)
    sign_in(api_client, alice)  # organisation details are changed by people, not keys (see the matrix)
    error = _error(api_client.patch("/api/v1/tenant", {"abn": "51 824 753 557"}, format="json"), 400)
    assert error["param"] == "abn" and "ABN" in error["message"]
    _error(api_client.patch("/api/v1/tenant", {"state": "Tasmania"}, format="json"), 400)
    body = api_client.patch("/api/v1/tenant", {"abn": "51 824 753 556", "state": "QLD"}, format="json").json()
    assert (body["abn"], body["state"]) == ("51824753556", "QLD")


@pytest.mark.parametrize(
    "query",
    ["/api/v1/keys?status=zombie", "/api/v1/keys?scope=root", "/api/v1/members?role=king",
     "/api/v1/invitations?status=later", "/api/v1/usage?since=yesterday",
     "/api/v1/usage?since=2026-02-01&until=2026-01-01"],
)
def test_malformed_filters_get_a_clear_400(api_client, acme, management_key, query):
    _error(api_client.get(query, **_auth(management_key(acme))), 400)


def test_lists_paginate_and_filter(api_client, acme, management_key, issue_key, member_of):
    key = management_key(acme)
    for n in range(5):
        issue_key(acme, name=f"k{n}")
    revoked = keys.parse_key(issue_key(acme, name="old"))[0]
    api_key_revoke(api_key=ApiKey.objects.get(key_id=revoked))
    page = api_client.get("/api/v1/keys?limit=2&offset=1", **_auth(key)).json()
    assert page["count"] == 7 and len(page["results"]) == 2
    assert "offset=3" in page["next"] and page["previous"]
    active = api_client.get("/api/v1/keys?status=active", **_auth(key)).json()
    assert active["count"] == 6 and revoked not in {k["key_id"] for k in active["results"]}
    scoped = api_client.get("/api/v1/keys?scope=management:write", **_auth(key)).json()
    assert [k["key_id"] for k in scoped["results"]] == [key.split("_")[1]]
    member_of(acme, Role.BILLING)
    billing = api_client.get("/api/v1/members?role=billing", **_auth(key)).json()
    assert [m["role"] for m in billing["results"]] == ["billing"]
    assert api_client.get("/api/v1/keys?limit=1000", **_auth(key)).json()["count"] == 7


def test_invitations_by_api_send_the_email(api_client, acme, management_key, django_capture_on_commit_callbacks):
    key = management_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        body = api_client.post("/api/v1/invitations", {"email": "Erin@Acme.example", "role": "agent"}, format="json",
                               **_auth(key)).json()
    assert body["email"] == "erin@acme.example" and body["status"] == "pending"
    assert mail.outbox[-1].to == ["erin@acme.example"] and "/invite/" in mail.outbox[-1].body
    pending = api_client.get("/api/v1/invitations?status=pending", **_auth(key)).json()
    assert [i["id"] for i in pending["results"]] == [body["id"]]
    assert api_client.delete(f"/api/v1/invitations/{body['id']}", **_auth(key)).json()["status"] == "revoked"


def test_usage_summary_aggregates_by_day_model_and_key(api_client, acme, bluegum, management_key):
    key = management_key(acme)
    now = timezone.now()
    rows = [(acme, "k1", "m-7b", 10, 5, now), (acme, "k1", "m-7b", 20, 10, now), (acme, "k2", "m-large", 1, 1, now),
            (acme, "k1", "m-7b", 1000, 1000, now - timedelta(days=90)), (bluegum, "k9", "m-7b", 500, 500, now)]
    for n, (tenant, key_id, model, p, c, at) in enumerate(rows):
        UsageEvent.objects.create(request_id=f"req_{n}", tenant=tenant, key_id=key_id, endpoint="chat.completions",
                                  model=model, status=200, prompt_tokens=p, completion_tokens=c, created_at=at)
    body = api_client.get("/api/v1/usage", **_auth(key)).json()
    assert body["totals"] == {"requests": 3, "prompt_tokens": 31, "completion_tokens": 16, "total_tokens": 47}
    assert {r["model"]: r["requests"] for r in body["by_model"]} == {"m-7b": 2, "m-large": 1}
    assert {r["key_id"]: r["prompt_tokens"] for r in body["by_key"]} == {"k1": 30, "k2": 1}
    assert sum(r["requests"] for r in body["by_day"]) == 3
    older = api_client.get(f"/api/v1/usage?since={(timezone.localdate() - timedelta(days=100)).isoformat()}",
                           **_auth(key)).json()
    assert older["totals"]["requests"] == 4


def test_throttling_answers_429_with_retry_after(api_client, acme, management_key, settings):
    settings.MANAGEMENT_API_THROTTLE_RATE = "3/min"
    key = management_key(acme)
    for _ in range(3):
        assert api_client.get("/api/v1/tenant", **_auth(key)).status_code == 200
    response = api_client.get("/api/v1/tenant", **_auth(key))
    _error(response, 429, "rate_limit_exceeded")
    assert int(response["Retry-After"]) > 0
    # Another key has its own allowance.
    assert api_client.get("/api/v1/tenant", **_auth(management_key(acme))).status_code == 200


def test_writes_have_a_tighter_throttle(api_client, acme, management_key, settings):
    settings.MANAGEMENT_API_WRITE_THROTTLE_RATE = "1/min"
    key = management_key(acme)
    assert api_client.post("/api/v1/keys", {"name": "a"}, format="json", **_auth(key)).status_code == 201
    _error(api_client.post("/api/v1/keys", {"name": "b"}, format="json", **_auth(key)), 429)
    assert api_client.get("/api/v1/tenant", **_auth(key)).status_code == 200


def test_session_writes_need_the_csrf_token(alice, acme):
    from rest_framework.test import APIClient

    from tests.conftest import add_totp, sign_in

    add_totp(alice)
    client = sign_in(APIClient(enforce_csrf_checks=True), alice)
    assert client.get("/api/v1/tenant").status_code == 200
    _error(client.patch("/api/v1/tenant", {"state": "NSW"}, format="json"), 403, "csrf_failed")


def test_schema_and_docs_are_served(client, db):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200 and b"openapi: 3" in schema.content and b"/api/v1/keys" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"<script>" not in docs.content and b"<style>" not in docs.content  # strict CSP: files only
    assert client.get("/api/docs/?script=").status_code == 200


def test_schema_validates_without_warnings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "true", "WATTLE_VAR_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
