"""Sign-up through allauth creates the person's organisation, records what they accepted, and needs a verified
email before the console opens."""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core import mail

from audit.models import AuditEntry
from tenants.models import Membership, PolicyAcceptance, Role, Tenant
from tenants.validators import abn_is_valid, validate_abn

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-and-unusual-passphrase-42"


def _form(**overrides) -> dict:
    data = {
        "email": "nina@koala.example",
        "organisation": "Koala Contact",
        "billing_email": "accounts@koala.example",
        "abn": "51 824 753 556",
        "state": "VIC",
        "password1": PASSWORD,
        "password2": PASSWORD,
        "accept_terms": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_sign_up_creates_the_organisation_and_records_acceptance(client, settings):
    response = client.post("/accounts/signup/", _form())
    assert response.status_code == 302
    user = get_user_model().objects.get(email="nina@koala.example")
    tenant = Tenant.objects.get(name="Koala Contact")
    assert (tenant.abn, tenant.state, tenant.billing_email) == ("51824753556", "VIC", "accounts@koala.example")
    assert Membership.objects.get(tenant=tenant).role == Role.OWNER
    acceptance = PolicyAcceptance.objects.get(user=user)
    assert acceptance.tenant == tenant
    assert acceptance.terms_version == settings.TERMS_VERSION
    assert acceptance.privacy_version == settings.PRIVACY_POLICY_VERSION
    assert acceptance.accepted_at is not None
    actions = set(AuditEntry.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert {"tenant.create", "account.signup", "policy.accept"} <= actions


def test_sign_up_page_shows_the_collection_notice(client):
    body = client.get("/accounts/signup/").content.decode()
    assert "Collection notice" in body and "privacy policy" in body and "OAIC" in body
    assert 'name="accept_terms"' in body and 'name="abn"' in body


def test_sign_up_needs_email_verification_before_the_console(client):
    client.post("/accounts/signup/", _form())
    assert not EmailAddress.objects.get(email="nina@koala.example").verified
    assert client.get("/dashboard/").status_code == 302  # not signed in yet
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", mail.outbox[-1].body).group(0)
    response = client.post(link.split("testserver")[1])
    assert response.status_code == 302
    assert EmailAddress.objects.get(email="nina@koala.example").verified
    # Signed in now: an owner lands on the MFA requirement before onboarding.
    response = client.get("/dashboard/", follow=True)
    assert response.redirect_chain[-1][0].startswith("/account/mfa-required/")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"abn": "51 824 753 557"}, "abn", "not a valid ABN"),
        ({"abn": "1234"}, "abn", "11 digits"),
        ({"accept_terms": None}, "accept_terms", "accept the terms"),
        ({"organisation": "   "}, "organisation", ""),
        ({"state": "XYZ"}, "state", "Select a valid choice"),
        ({"billing_email": "not-an-email"}, "billing_email", "valid email"),
        ({"email": ""}, "email", ""),
        ({"password2": "something-else-entirely"}, "password2", "same password"),
    ],
)
def test_malformed_sign_up_is_refused_with_a_clear_error(client, overrides, field, message):
    response = client.post("/accounts/signup/", _form(**overrides))
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.errors
    assert message in " ".join(form.errors[field])
    assert not Tenant.objects.exists() and not get_user_model().objects.exists()


def test_abn_checksum():
    assert abn_is_valid("51 824 753 556")
    assert abn_is_valid("53004085616")
    assert not abn_is_valid("51 824 753 557")
    assert not abn_is_valid("01 824 753 556")
    assert validate_abn(" 51-824-753-556 ") == "51824753556"
    assert validate_abn("") == ""


def test_existing_email_does_not_create_a_second_account(client, alice):
    response = client.post("/accounts/signup/", _form(email=alice.email))
    assert response.status_code == 302  # allauth does not reveal that the account exists...
    assert get_user_model().objects.filter(email=alice.email).count() == 1
    assert not Tenant.objects.filter(name="Koala Contact").exists()  # ...and nothing is created


def test_login_is_rate_limited_after_repeated_failures(client, alice):
    for _ in range(5):
        response = client.post("/accounts/login/", {"login": alice.email, "password": "wrong"})
        assert "not correct" in response.content.decode()
    response = client.post("/accounts/login/", {"login": alice.email, "password": "wrong"})
    assert "Too many failed login attempts" in response.content.decode()
    assert AuditEntry.objects.filter(action="auth.login_failed").count() == 5


def test_password_reset_by_email(client, alice, django_capture_on_commit_callbacks):
    mail.outbox.clear()
    response = client.post("/accounts/password/reset/", {"email": alice.email})
    assert response.status_code == 302
    link = re.search(r"https?://testserver(/accounts/password/reset/key/\S+/)", mail.outbox[-1].body).group(1)
    response = client.get(link, follow=True)
    form_url = response.redirect_chain[-1][0] if response.redirect_chain else link
    new = "a-fresh-long-passphrase-99"
    response = client.post(form_url, {"password1": new, "password2": new})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)
    assert AuditEntry.objects.filter(action="auth.password_reset", actor=alice).exists()


def test_session_list_shows_the_users_sessions(client, alice):
    client.post("/accounts/login/", {"login": alice.email, "password": "correct-horse-battery-staple"})
    response = client.get("/accounts/sessions/")
    assert response.status_code == 200 and "Sessions" in response.content.decode()
