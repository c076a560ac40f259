"""R-SEC-1 and R-SEC-2: owners and admins need a second factor before any tenant page; staff need a passkey,
used in this session, before any staff page; sensitive actions need a recent re-authentication."""

from __future__ import annotations

import pytest
from allauth.mfa.adapter import get_adapter as get_mfa_adapter
from django.test import Client

from tenants.models import ApiKey, Role
from tests.conftest import add_passkey, add_totp, make_user, sign_in

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owners_and_admins_without_mfa_are_sent_to_set_it_up(client, acme, member_of, role):
    user = member_of(acme, role, mfa=False)
    sign_in(client, user)
    for path in (f"/t/{acme.slug}/", f"/t/{acme.slug}/keys/", f"/t/{acme.slug}/members/", "/dashboard/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/account/mfa-required/?next=")
    page = client.get(f"/account/mfa-required/?next=/t/{acme.slug}/keys/").content.decode()
    assert "/accounts/2fa/totp/activate/" in page and "/accounts/2fa/webauthn/add/" in page
    # The management API says so in its own shape.
    error = client.get("/api/v1/keys").json()["error"]
    assert error["code"] == "mfa_required"
    add_totp(user)
    assert client.get(f"/t/{acme.slug}/keys/").status_code == 200


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.BILLING, Role.AGENT])
def test_other_roles_do_not_need_mfa(client, acme, member_of, role):
    sign_in(client, member_of(acme, role, mfa=False))
    assert client.get(f"/t/{acme.slug}/").status_code == 200


def test_owner_keeps_at_least_one_second_factor(alice, acme):
    totp = add_totp(alice)
    passkey = add_passkey(alice)
    adapter = get_mfa_adapter()
    assert adapter.can_delete_authenticator(totp)  # the passkey remains
    passkey.delete()
    assert not adapter.can_delete_authenticator(totp)


def test_staff_keep_at_least_one_passkey(staff):
    (passkey,) = staff.authenticator_set.all()
    assert not get_mfa_adapter().can_delete_authenticator(passkey)
    add_passkey(staff)
    assert get_mfa_adapter().can_delete_authenticator(passkey)


@pytest.mark.parametrize("path", ["/staff/", "/staff/django-admin/"])
def test_staff_without_a_passkey_are_sent_to_add_one(path):
    ops = make_user("ops2@wattle.example", staff=True)
    add_totp(ops)  # an authenticator app is not phishing-resistant: not enough for staff
    client = sign_in(Client(), ops)
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/account/mfa-required/")


def test_staff_with_a_passkey_must_have_used_it_in_this_session(staff):
    client = sign_in(Client(), staff, passkey_used=False)
    response = client.get("/staff/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/webauthn/reauthenticate/?next=%2Fstaff%2F"
    client = sign_in(Client(), staff, passkey_used=True)
    assert client.get("/staff/").status_code == 200
    assert client.get("/staff/django-admin/").status_code == 200


def test_people_who_are_not_staff_never_see_the_staff_console(client, bob, bluegum):
    add_passkey(bob)
    sign_in(client, bob, passkey_used=True)
    assert client.get("/staff/").status_code == 404
    assert client.get(f"/staff/tenants/{bluegum.slug}/").status_code == 404
    assert client.get("/staff/django-admin/", follow=True).status_code == 403


def test_anonymous_visitors_to_the_admin_sign_in_through_allauth(client, db):
    response = client.get("/staff/django-admin/", follow=True)
    assert response.redirect_chain[-1][0].startswith("/accounts/login/")


def test_key_creation_needs_a_recent_reauthentication_and_resumes_after_it(client, alice, acme,
                                                                          django_capture_on_commit_callbacks):
    add_totp(alice)
    sign_in(client, alice, reauthenticated=False)
    assert client.get(f"/t/{acme.slug}/keys/new/").status_code == 200  # the form itself is fine
    response = client.post(f"/t/{acme.slug}/keys/new/", {"name": "ivr", "scopes": ["inference"]})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/reauthenticate/")
    assert not ApiKey.objects.exists()
    # allauth offers the strongest method the user has first; the password is always there.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/accounts/reauthenticate/?next=/t/{acme.slug}/keys/new/",
                               {"password": "correct-horse-battery-staple"})
    assert response.status_code == 201 and "wtl_" in response.content.decode()  # the suspended POST ran
    assert ApiKey.objects.get().name == "ivr"


def test_api_key_creation_by_session_needs_a_recent_reauthentication(api_client, alice, acme):
    add_totp(alice)
    sign_in(api_client, alice, reauthenticated=False)
    error = api_client.post("/api/v1/keys", {"name": "x"}, format="json").json()["error"]
    assert error["code"] == "reauthentication_required"
