"""Platform staff need a passkey: registered through allauth's WebAuthn pages with Chromium's virtual
authenticator, then used (not just owned) before the staff console opens."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator

from audit.models import AuditEntry
from tests.conftest import PASSWORD, make_user, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def virtual_authenticator(page):
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    result = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
    }})
    yield cdp, result["authenticatorId"]
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": result["authenticatorId"]})


def test_staff_registers_a_passkey_and_must_use_it_for_the_staff_console(page, portal_server, virtual_authenticator,
                                                                          acme):
    cdp, authenticator_id = virtual_authenticator
    staff = make_user("ops@wattle.example", staff=True)
    # WebAuthn needs a domain as relying party id: localhost (a secure context over plain HTTP).
    base = f"http://localhost:{portal_server.port}"

    page.goto(f"{base}/accounts/login/?next=/staff/")
    page.get_by_label("Email").fill(staff.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()

    # Signed in with a password only: the staff console sends staff to add a passkey.
    page.wait_for_url("**/account/mfa-required/**")
    assert page.get_by_text("passkey or security key", exact=False).first.is_visible()
    page.get_by_role("link", name="Add a passkey or security key").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    page.get_by_label("Name").fill("Laptop passkey")
    page.get_by_role("button", name="Add").click()
    # The add page's own URL is under /2fa/ too: wait until the browser has left it.
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    passkey = wait_for(lambda: Authenticator.objects.filter(user=staff, type=Authenticator.Type.WEBAUTHN).first())
    assert passkey.wrap().name == "Laptop passkey"
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})["credentials"]
    assert len(credentials) == 1

    # Owning a passkey is not enough: this session must have used it.
    page.goto(f"{base}/staff/")
    page.wait_for_url("**/webauthn/reauthenticate/**")
    page.get_by_role("button", name="Use a security key").click()
    page.wait_for_url(f"{base}/staff/")
    assert page.get_by_role("heading", name="Tenants").is_visible()
    assert page.get_by_role("link", name="Acme Contact").is_visible()

    assert AuditEntry.objects.filter(action="mfa.add", actor=staff, data__type="webauthn").exists()
    assert AuditEntry.objects.filter(action="mfa.use", actor=staff, data__type="webauthn").exists()
    assert not [e for e in page.console_errors if "Content Security Policy" in e], page.console_errors
