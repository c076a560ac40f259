"""A ``next`` parameter only ever leads back to this site: every one that is rendered or followed goes through
``tenants.redirects.safe_next_url``, and anything else falls back to a safe default."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tenants import keys
from tenants.models import Role
from tenants.redirects import safe_next_url
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db

NASTY = [
    "/\\evil.example/x",  # browsers read the backslash as a slash: //evil.example/x
    "//evil.example",
    "https://evil.example",
    "http://evil.example/t/acme/",
    "javascript:alert(1)",
    "\\\\evil",
    "\\/evil.example",
    "/\t/evil.example",
    "\x01/evil.example",
    "data:text/html,<script>alert(1)</script>",
    "https:evil.example",
]


@pytest.mark.parametrize("nasty", NASTY)
def test_off_site_values_fall_back_to_the_default(rf, nasty):
    assert safe_next_url(rf.get("/"), nasty, "/dashboard/") == "/dashboard/"
    assert safe_next_url(rf.get("/", secure=True), nasty) == ""


def test_same_site_values_are_kept(rf):
    request = rf.get("/")
    for good in ("/t/acme/keys/", "/t/acme/keys/?status=revoked", "http://testserver/t/acme/"):
        assert safe_next_url(request, good, "/") == good
    assert safe_next_url(request, None, "/x/") == "/x/" and safe_next_url(request, "", "/x/") == "/x/"
    # Over https, a plain-http link to ourselves would downgrade the connection.
    assert safe_next_url(rf.get("/", secure=True), "http://testserver/t/acme/", "/") == "/"


@pytest.mark.parametrize("nasty", NASTY)
def test_the_mfa_required_page_never_links_off_site(client, acme, member_of, nasty):
    sign_in(client, member_of(acme, Role.OWNER, mfa=False))
    response = client.get(f"/account/mfa-required/?next={quote(nasty, safe='')}")
    assert response.status_code == 200 and response.context["next_url"] == ""
    assert "evil" not in response.content.decode() and "javascript:" not in response.content.decode()


def test_the_mfa_required_page_ignores_an_off_site_value_kept_in_the_session(client, acme, member_of):
    sign_in(client, member_of(acme, Role.OWNER, mfa=False))
    session = client.session
    session["wattle_mfa_next"] = "/\\evil.example/x"
    session.save()
    assert client.get("/account/mfa-required/").context["next_url"] == ""
    page = client.get(f"/account/mfa-required/?next=/t/{acme.slug}/keys/").content.decode()
    assert f'href="/t/{acme.slug}/keys/"' in page


def test_a_post_sent_to_set_up_mfa_returns_only_to_a_same_site_referer(client, acme, member_of):
    sign_in(client, member_of(acme, Role.OWNER, mfa=False))
    response = client.post(f"/t/{acme.slug}/settings/", {"name": "x"}, HTTP_REFERER="https://evil.example/")
    assert response.status_code == 302 and response["Location"] == "/account/mfa-required/?next=%2F"
    assert client.session["wattle_mfa_next"] == "/"
    client.post(f"/t/{acme.slug}/settings/", {"name": "x"}, HTTP_REFERER=f"http://testserver/t/{acme.slug}/")
    assert client.session["wattle_mfa_next"] == f"http://testserver/t/{acme.slug}/"


@pytest.mark.parametrize("nasty", NASTY)
def test_a_forms_next_is_followed_only_on_site(owner_client, acme, issue_key, nasty,
                                              django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/keys/{key_id}/revoke/", {"next": nasty})
    assert response.status_code == 302 and response["Location"] == f"/t/{acme.slug}/keys/"


def test_a_forms_same_site_next_is_followed(owner_client, acme, issue_key, django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    detail = f"/t/{acme.slug}/keys/{key_id}/"
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"{detail}revoke/", {"next": detail})
    assert response["Location"] == detail
