from __future__ import annotations

import pytest


def test_healthz_answers_without_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["x-request-id"].startswith("req_")


@pytest.mark.django_db
def test_login_page_renders_with_a_strict_csp(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<form" in body and 'name="login"' in body
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
def test_home_and_privacy_pages_render(client):
    assert "Sydney" in client.get("/").content.decode()
    privacy = client.get("/privacy/").content.decode()
    assert "Automated decisions" in privacy and "Information Commissioner" in privacy


def test_dashboard_requires_login(client, db):
    response = client.get("/dashboard/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_dashboard_shows_only_the_users_tenant(client, alice, acme, bob, bluegum):
    client.force_login(alice)
    body = client.get("/dashboard/").content.decode()
    assert "Acme Contact" in body and "Bluegum Calls" not in body


@pytest.mark.django_db
def test_unknown_page_is_a_friendly_404(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()
    api = client.get("/api/nothing", HTTP_ACCEPT="application/json")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
