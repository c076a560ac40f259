"""The account pages (allauth's, in our layout): sentence case, our buttons, a tab bar with the way back to
the console and the current organisation named in the header; the recovery codes page after turning on
two-factor authentication leads on; /favicon.ico is served."""

from __future__ import annotations

import re

import pytest
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes

from tests.conftest import add_totp, sign_in

pytestmark = pytest.mark.django_db

ACCOUNT_PAGES = {
    "/accounts/2fa/": "Two-factor authentication",
    "/accounts/2fa/webauthn/": "Passkeys and security keys",
    "/accounts/email/": "Email addresses",
    "/accounts/password/change/": "Change password",
    "/accounts/sessions/": "Sessions",
    "/accounts/2fa/recovery-codes/": "Recovery codes",
}


def test_favicon_is_served_as_an_image(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert client.post("/favicon.ico").status_code == 405


def test_pages_link_the_favicon(client):
    assert '<link rel="icon" href="/favicon.ico"' in client.get("/accounts/login/").content.decode()


@pytest.mark.parametrize(("url", "heading"), ACCOUNT_PAGES.items())
def test_account_pages_have_tabs_back_to_the_console_and_name_the_organisation(client, alice, acme, bluegum, url,
                                                                               heading):
    from tenants.models import Membership, Role

    add_totp(alice)
    RecoveryCodes.activate(alice)
    Membership.objects.create(tenant=bluegum, user=alice, role=Role.DEVELOPER)
    sign_in(client, alice)
    client.get(f"/t/{bluegum.slug}/")  # the console last showed Bluegum
    response = client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert re.search(rf"<h1>\s*{heading}\s*</h1>", body), body
    assert '<nav class="subnav" aria-label="Account">' in body
    assert "Back to the console of Bluegum Calls" in body
    summary = re.search(r"<summary>.*?</summary>", body, re.S).group(0)
    assert "Bluegum Calls" in summary
    # Sentence case and our buttons: no allauth Title Case headings, every button styled as ours.
    for title_case in ("Two-Factor Authentication", "Recovery Codes", "Security Keys", "Email Addresses",
                       "Sign Out Other Sessions", "Change Password"):
        assert title_case not in body
    main = body[body.index("<main"):body.index("</main>")]
    for button in re.findall(r"<button[^>]*>", main):
        assert 'class="' in button, button


def test_account_pages_need_sign_in(client):
    for url in ACCOUNT_PAGES:
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url


def test_sign_in_page_is_sentence_case_with_our_buttons(client):
    body = client.get("/accounts/login/").content.decode()
    assert re.search(r"<h1>\s*Sign in\s*</h1>", body)
    assert re.search(r'<button class="button"[^>]*type="submit"\s*>\s*Sign in\s*</button>', body)
    assert "Sign In" not in body


def test_confirm_access_page_is_ours(client, alice, acme):
    add_totp(alice)
    sign_in(client, alice, reauthenticated=False)
    body = client.get("/accounts/reauthenticate/").content.decode()
    assert "Confirm it&#x27;s you" in body or "Confirm it's you" in body
    assert "Confirm Access" not in body


def test_recovery_codes_page_leads_on_with_two_clear_buttons(client, alice, acme):
    add_totp(alice)
    RecoveryCodes.activate(alice)
    sign_in(client, alice)
    body = client.get("/accounts/2fa/recovery-codes/").content.decode()
    assert re.search(r'<a class="button" href="/dashboard/">Continue to the console</a>', body)
    assert '<a class="button button-secondary" href="/accounts/2fa/recovery-codes/download/">Download codes</a>' in body
    assert '<a class="button button-secondary" href="/accounts/2fa/recovery-codes/generate/">Generate new codes</a>' \
        in body
