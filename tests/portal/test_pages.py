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


def test_dashboard_opens_the_users_own_tenant(client, acme, bluegum, member_of, issue_key):
    from tenants.models import Role

    issue_key(acme)
    client.force_login(member_of(acme, Role.DEVELOPER))
    response = client.get("/dashboard/")
    assert response["Location"] == f"/t/{acme.slug}/"
    body = client.get(response["Location"]).content.decode()
    assert "Acme Contact" in body and "Bluegum Calls" not in body


def test_dashboard_without_an_organisation_explains_invitations(client, db):
    from tests.conftest import make_user

    client.force_login(make_user("loner@example.com"))
    body = client.get("/dashboard/").content.decode()
    assert "No organisation yet" in body and "invite" in body


@pytest.mark.django_db
def test_terms_page_shows_its_version(client, settings):
    body = client.get("/terms/").content.decode()
    assert "Terms of service" in body and settings.TERMS_VERSION in body


def test_console_pages_carry_no_inline_script_or_style(owner_client, acme):
    import re

    for path in (f"/t/{acme.slug}/", f"/t/{acme.slug}/keys/new/", f"/t/{acme.slug}/members/", "/accounts/signup/"):
        body = owner_client.get(path).content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", body), path
        assert " style=" not in body and "<style" not in body, path


@pytest.mark.django_db
def test_json_errors_share_one_shape(client):
    for path, status in (("/api/nothing", 404), ("/api/v1/keys", 401)):
        response = client.get(path)
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "code", "param"}


@pytest.mark.django_db
def test_unknown_page_is_a_friendly_404(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()
    api = client.get("/api/nothing", HTTP_ACCEPT="application/json")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
