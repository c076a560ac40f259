"""`/v1` and `/metrics` bypass Django's middleware: they carry its security headers themselves (HSTS outside
DEBUG with Django's SECURE_HSTS_* values, nosniff, no-store), on JSON answers, errors and streams alike."""

from __future__ import annotations

import httpx
import pytest

from inference.gateway.app import security_headers

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def assert_secured(response: httpx.Response) -> None:
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers.get_list("cache-control") == ["no-store"]


def test_json_answers_and_errors_carry_the_security_headers(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    auth = {"Authorization": f"Bearer {key}"}
    ok = httpx.post(f"{gateway_ready.base_url}/v1/chat/completions", headers=auth,
                    json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert ok.status_code == 200
    assert_secured(ok)
    assert_secured(httpx.get(f"{gateway_ready.base_url}/v1/models", headers=auth))
    unauthenticated = httpx.post(f"{gateway_ready.base_url}/v1/chat/completions", json={})
    assert unauthenticated.status_code == 401
    assert_secured(unauthenticated)
    bad = httpx.post(f"{gateway_ready.base_url}/v1/chat/completions", headers=auth, content=b"{not json")
    assert bad.status_code == 400
    assert_secured(bad)
    unknown = httpx.get(f"{gateway_ready.base_url}/v1/nothing-here", headers=auth)
    assert unknown.status_code == 404
    assert_secured(unknown)


def test_streams_carry_the_security_headers(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    with httpx.stream(
        "POST", f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert_secured(response)
        assert b"data: [DONE]" in response.read()


def test_metrics_answers_carry_the_security_headers(portal_server):
    allowed = httpx.get(f"{portal_server.base_url}/metrics")
    assert allowed.status_code == 200
    assert_secured(allowed)
    refused = httpx.get(f"{portal_server.base_url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert refused.status_code == 403
    assert_secured(refused)


def test_hsts_follows_django_settings_and_is_off_in_debug(settings):
    settings.SECURE_HSTS_SECONDS = 600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = False
    settings.SECURE_HSTS_PRELOAD = False
    assert dict(security_headers())[b"strict-transport-security"] == b"max-age=600"
    settings.DEBUG = True
    assert b"strict-transport-security" not in dict(security_headers())
    assert dict(security_headers())[b"x-content-type-options"] == b"nosniff"
    settings.DEBUG = False
    settings.SECURE_HSTS_SECONDS = 0
    assert b"strict-transport-security" not in dict(security_headers())
