"""Every email is branded, in plain text and HTML: the account emails (verification, password reset), the
invitation, budget alerts. The site they name comes from WATTLE_BASE_URL, never the request's host."""

from __future__ import annotations

import re
import time

import pytest
from django.core import mail

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

PUBLIC = "https://console.wattle.com.au"


def parts(message) -> tuple[str, str]:
    html = [content for content, mimetype in message.alternatives if mimetype == "text/html"]
    assert len(html) == 1, "expected one HTML part beside the text"
    return message.body, html[0]


def assert_branded(message, *, link: str | None = None) -> None:
    text, html = parts(message)
    for part in (text, html, message.subject):
        assert "localhost" not in part and "18500" not in part
    assert "Wattle" in message.subject
    assert "Wattle" in text
    assert "<strong" in html and "Wattle" in html and "Hosted in Sydney" in html
    assert f'href="{PUBLIC}"' in html and "console.wattle.com.au" in html
    if link:
        assert link in text and f'href="{link}"' in html  # the link is clickable in the HTML part


@pytest.fixture
def public_address(settings):
    settings.WATTLE_BASE_URL = PUBLIC
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost"]


def test_verification_email_names_the_site_from_the_public_address(client, public_address):
    mail.outbox.clear()
    response = client.post("/accounts/signup/", {
        "email": "nina@koala.example", "organisation": "Koala Contact", "billing_email": "accounts@koala.example",
        "state": "VIC", "password1": PASSWORD + "-x", "password2": PASSWORD + "-x", "accept_terms": "on",
    }, HTTP_HOST="localhost:18500")
    assert response.status_code == 302
    (message,) = mail.outbox
    text, html = parts(message)
    assert "Hello from Wattle," in text and "console.wattle.com.au" in text
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", text).group(0)
    assert f'href="{link}"' in html
    assert "Hello from localhost" not in text and "Hello from localhost" not in html


def test_password_reset_email_is_branded(client, alice, public_address):
    mail.outbox.clear()
    response = client.post("/accounts/password/reset/", {"email": alice.email})
    assert response.status_code == 302
    (message,) = mail.outbox
    link = re.search(r"http://testserver/accounts/password/reset/key/\S+/", message.body).group(0)
    assert_branded(message, link=link)


def test_invitation_email_is_branded(owner_client, acme, public_address, django_capture_on_commit_callbacks):
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/t/{acme.slug}/invitations/", {"email": "carol@acme.example", "role": "developer"})
    (message,) = mail.outbox
    link = re.search(r"http://testserver/invite/\S+/", message.body).group(0)
    assert_branded(message, link=link)
    assert "Acme Contact" in parts(message)[1]


def test_budget_alert_email_is_branded(acme, alice, public_address, django_capture_on_commit_callbacks):
    from billing.budget_alerts import _send
    from billing.models import BudgetAlert
    from core.quotas import windows_at

    alert = BudgetAlert.objects.create(tenant=acme, budget="month_tokens", period=windows_at(time.time()).month,
                                       threshold=80, used=800_000, limit=1_000_000)
    mail.outbox.clear()
    _send(alert.pk)
    (message,) = mail.outbox
    assert_branded(message)
    assert "80%" in message.subject and "800,000 tokens" in parts(message)[1]


def test_html_part_escapes_what_it_quotes(acme, public_address):
    """A tenant's name is text: in the HTML part it is escaped, never markup."""
    from tenants.emails import branded_message

    message = branded_message("[Wattle] <b>x</b>", "Hello <script>alert(1)</script> & https://e.example/a?b=1&c=2",
                              ["a@example.com"])
    html = parts(message)[1]
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="https://e.example/a?b=1&amp;c=2"' in html
    assert "<title>[Wattle] &lt;b&gt;x&lt;/b&gt;</title>" in html



def test_a_name_with_a_line_break_neither_injects_a_header_nor_stops_the_email(
        owner_client, acme, public_address, django_capture_on_commit_callbacks):
    """An organisation's name is free text and may hold a line break (the settings form and the API keep inner
    whitespace). Put in a subject it must not add a header (Bcc) and must not make the email fail to send:
    Django refuses a subject with a newline (BadHeaderError), which would drop the invitation, budget alert or
    payment notice."""
    acme.name = "Acme\nBcc: victim@evil.example"
    acme.save(update_fields=["name"])
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/t/{acme.slug}/invitations/", {"email": "carol@acme.example", "role": "developer"})
    (message,) = mail.outbox
    assert "\n" not in message.subject and "\r" not in message.subject
    assert "Acme Bcc: victim@evil.example" in message.subject
    assert message.message()["Bcc"] is None and message.recipients() == ["carol@acme.example"]


SPOOF = "Acme\n\nYour account is locked. Unlock it at https://evil.example/unlock\n\nWattle support"


def test_an_organisation_name_is_kept_on_one_line_so_it_cannot_write_paragraphs_into_emails(
        client, owner_client, acme, alice, settings):
    """The name is quoted in emails other people receive (an invitation, from our address): with line breaks it
    could add a paragraph of its own that reads as ours. Sign-up, the settings page and the API keep it on one
    line (runs of whitespace as one space)."""
    from rest_framework.test import APIClient

    from tenants.models import Tenant
    from tests.conftest import sign_in
    from tests.tenants.test_signup import _form

    one_line = " ".join(SPOOF.split())
    client.post("/accounts/signup/", _form(organisation=SPOOF))
    assert Tenant.objects.get(billing_email="accounts@koala.example").name == one_line
    page = owner_client.post(f"/t/{acme.slug}/settings/", {"name": SPOOF, "billing_email": "ap@acme.example"})
    assert page.status_code == 302
    acme.refresh_from_db()
    assert acme.name == one_line
    api = sign_in(APIClient(), alice)  # owner_client gave alice her second factor
    answer = api.patch("/api/v1/tenant", {"name": "Acme\r\nTwo\tPty"}, format="json")
    assert answer.status_code == 200 and answer.json()["name"] == "Acme Two Pty"
