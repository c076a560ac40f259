"""What the team page and a support session say: re-inviting an address says the invitation was re-sent (and
the earlier link stops working); removing the sole owner is refused before the confirmation page; a staff
support session shows one banner, and the pages it may not open say why in a support session's terms."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from tenants.models import Invitation, Membership, Role
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def _invite(client, tenant, email, capture):
    with capture(execute=True):
        return client.post(f"/t/{tenant.slug}/invitations/", {"email": email, "role": "developer"}, follow=True)


def test_reinviting_an_address_says_it_was_resent(owner_client, acme, django_capture_on_commit_callbacks):
    first = _invite(owner_client, acme, "carol@acme.example", django_capture_on_commit_callbacks)
    assert "Invitation sent to carol@acme.example." in _messages(first)
    mail.outbox.clear()
    again = _invite(owner_client, acme, "Carol@Acme.example", django_capture_on_commit_callbacks)
    assert "Invitation re-sent to carol@acme.example. The link in the earlier email no longer works." \
        in _messages(again)
    assert len(mail.outbox) == 1  # the new email went
    assert Invitation.objects.filter(tenant=acme, email="carol@acme.example", revoked_at__isnull=True).count() == 1


def test_inviting_after_an_expired_invitation_is_a_fresh_invitation(owner_client, acme,
                                                                   django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    _invite(owner_client, acme, "dan@acme.example", django_capture_on_commit_callbacks)
    Invitation.objects.filter(email="dan@acme.example").update(expires_at=timezone.now() - timedelta(days=1))
    response = _invite(owner_client, acme, "dan@acme.example", django_capture_on_commit_callbacks)
    assert "Invitation sent to dan@acme.example." in _messages(response)


def test_reinvite_needs_the_right_role(client, acme, member_of, django_capture_on_commit_callbacks):
    developer = sign_in(client, member_of(acme, Role.DEVELOPER))
    response = developer.post(f"/t/{acme.slug}/invitations/", {"email": "x@acme.example", "role": "developer"})
    assert response.status_code == 403


def test_sole_owner_removing_themselves_is_refused_before_the_confirmation(owner_client, acme, alice):
    me = Membership.objects.get(tenant=acme, user=alice)
    response = owner_client.get(f"/t/{acme.slug}/members/{me.pk}/remove/", follow=True)
    assert response.redirect_chain == [(f"/t/{acme.slug}/members/", 302)]
    assert "An organisation always needs at least one owner. Transfer ownership first." in _messages(response)
    assert b"Remove alice" not in response.content  # no confirmation page was shown
    assert Membership.objects.filter(pk=me.pk).exists()


def test_an_owner_with_a_co_owner_sees_the_confirmation(owner_client, acme, alice, member_of):
    member_of(acme, Role.OWNER, email="co@acme.example")
    me = Membership.objects.get(tenant=acme, user=alice)
    response = owner_client.get(f"/t/{acme.slug}/members/{me.pk}/remove/")
    assert response.status_code == 200
    assert re.search(rb"<h1>Remove alice@[^<]+\?</h1>", response.content)


def test_removing_a_member_of_another_tenant_is_404(owner_client, bluegum, bob):
    theirs = Membership.objects.get(tenant=bluegum, user=bob)
    assert owner_client.get(f"/t/{bluegum.slug}/members/{theirs.pk}/remove/").status_code == 404


@pytest.fixture
def acting(staff_client, acme):
    response = staff_client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 4711"}, follow=True)
    assert response.status_code == 200
    return response


def test_support_session_shows_one_banner(acting, staff_client, acme):
    assert acting.content.decode().count("You are acting as") == 1
    page = staff_client.get(f"/t/{acme.slug}/keys/").content.decode()
    assert page.count("You are acting as") == 1 and "Ticket 4711" in page


def test_pages_a_support_session_may_not_open_say_so_in_its_terms(acting, staff_client, acme):
    response = staff_client.get(f"/t/{acme.slug}/keys/new/")
    assert response.status_code == 403
    body = response.content.decode()
    assert "A support session can read Acme Contact" in body
    assert "Ask an owner or admin" not in body
    assert f'href="/staff/tenants/{acme.slug}/"' in body
    onboarding = staff_client.get(f"/t/{acme.slug}/welcome/").content.decode()
    assert "A support session cannot create keys." in onboarding and "Ask an owner" not in onboarding


def test_members_still_get_the_members_message(client, acme, member_of):
    billing = sign_in(client, member_of(acme, Role.BILLING))
    body = billing.get(f"/t/{acme.slug}/keys/new/").content.decode()
    assert "Ask an owner or admin if you need it." in body
