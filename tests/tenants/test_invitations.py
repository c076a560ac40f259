"""Invitations by email: single-use tokens stored as digests, that expire, and that only the invited address
can accept (as an existing user, or by signing up)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from audit.models import AuditEntry
from tenants.models import Invitation, Membership, Role, Tenant
from tests.conftest import make_user, sign_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def invite(owner_client, acme, django_capture_on_commit_callbacks):
    """invite(email, role) -> the accept path from the email the invitee received."""

    def send(email: str, role: str = "developer") -> str:
        mail.outbox.clear()
        with django_capture_on_commit_callbacks(execute=True):
            response = owner_client.post(f"/t/{acme.slug}/invitations/", {"email": email, "role": role})
        assert response.status_code == 302, response.content[:500]
        (message,) = mail.outbox
        assert message.to == [email] and "Acme Contact" in message.subject
        return re.search(r"https?://testserver(/invite/\S+/)", message.body).group(1)

    return send


def test_invitation_email_carries_a_single_use_token_stored_as_a_digest(invite, acme):
    path = invite("carol@acme.example")
    token = path.split("/")[2]
    invitation = Invitation.objects.get(email="carol@acme.example")
    assert token not in invitation.token_hash and len(invitation.token_hash) == 64
    assert invitation.expires_at > timezone.now() + timedelta(days=6)
    assert AuditEntry.objects.get(action="invitation.create").data["email"] == "carol@acme.example"


def test_existing_user_accepts_once(client, invite, acme):
    carol = make_user("carol@acme.example")
    path = invite("carol@acme.example", "billing")
    sign_in(client, carol)
    assert "Join Acme Contact" in client.get(path).content.decode()
    response = client.post(path)
    assert response.status_code == 302 and response["Location"] == f"/t/{acme.slug}/"
    assert Membership.objects.get(user=carol, tenant=acme).role == Role.BILLING
    assert {"invitation.accept", "member.add"} <= set(AuditEntry.objects.values_list("action", flat=True))
    # Single use: the link is spent.
    assert client.post(path).status_code == 410


def test_only_the_invited_address_can_accept(client, invite, acme, bob):
    path = invite("carol@acme.example")
    sign_in(client, bob)
    response = client.post(path)
    assert response.status_code == 400 and "carol@acme.example" in response.content.decode()
    assert not Membership.objects.filter(user=bob, tenant=acme).exists()


def test_expired_and_revoked_invitations_are_refused(client, owner_client, invite, acme):
    carol = make_user("carol@acme.example")
    path = invite("carol@acme.example")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    sign_in(client, carol)
    assert client.post(path).status_code == 410
    path = invite("carol@acme.example")
    invitation = Invitation.objects.get(accepted_at__isnull=True, revoked_at__isnull=True,
                                        expires_at__gt=timezone.now())
    owner_client.post(f"/t/{acme.slug}/invitations/{invitation.pk}/revoke/")
    assert client.get(path).status_code == 410
    assert client.get("/invite/not-a-real-token/").status_code == 404


def test_a_new_invitation_replaces_the_pending_one(invite):
    first = invite("carol@acme.example")
    invite("carol@acme.example", "agent")
    assert Invitation.objects.filter(email="carol@acme.example", revoked_at__isnull=False).count() == 1
    assert Invitation.objects.get(email="carol@acme.example", revoked_at__isnull=True).role == Role.AGENT
    assert first  # the first link now answers "revoked"


def test_new_person_signs_up_from_the_invitation_and_joins(client, invite, acme):
    path = invite("dave@acme.example", "agent")
    assert "Create an account" in client.get(path).content.decode()
    page = client.get("/accounts/signup/").content.decode()
    assert "You are joining" in page and 'name="organisation"' not in page
    password = "a-long-and-unusual-passphrase-42"
    response = client.post("/accounts/signup/", {
        "email": "dave@acme.example", "password1": password, "password2": password, "accept_terms": "on",
    })
    assert response.status_code == 302
    dave = get_user_model().objects.get(email="dave@acme.example")
    # The emailed link proved the address: no second verification email, and no tenant of his own.
    assert EmailAddress.objects.get(user=dave).verified
    assert Tenant.objects.count() == 1
    response = client.post(path)
    assert response.status_code == 302
    assert Membership.objects.get(user=dave, tenant=acme).role == Role.AGENT


def test_invited_sign_up_must_use_the_invited_address(client, invite):
    path = invite("dave@acme.example")
    client.get(path)
    password = "a-long-and-unusual-passphrase-42"
    response = client.post("/accounts/signup/", {
        "email": "mallory@evil.example", "password1": password, "password2": password, "accept_terms": "on",
    })
    assert response.status_code == 200 and "email" in response.context["form"].errors
    assert not get_user_model().objects.filter(email="mallory@evil.example").exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [({"email": "not-an-email", "role": "developer"}, "email"),
     ({"email": "", "role": "developer"}, "email"),
     ({"email": "x@acme.example", "role": "overlord"}, "role"),
     ({"email": "alice@acme.example", "role": "developer"}, "email")],  # already a member
)
def test_malformed_invitation_is_refused(owner_client, acme, data, field):
    response = owner_client.post(f"/t/{acme.slug}/invitations/", data)
    assert response.status_code == 400 and field in response.context["invite_form"].errors
    assert not Invitation.objects.exists() and not mail.outbox


def test_admin_cannot_invite_an_owner(client, acme, member_of):
    sign_in(client, member_of(acme, Role.ADMIN))
    response = client.post(f"/t/{acme.slug}/invitations/", {"email": "x@acme.example", "role": "owner"})
    assert response.status_code == 400 and "role" in response.context["invite_form"].errors
