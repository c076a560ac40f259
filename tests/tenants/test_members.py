"""Team management: role changes under the owner rules, removal that ends access at once, ownership transfer,
and people who belong to several tenants."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from audit.models import AuditEntry
from tenants.models import Membership, Role
from tenants.services import member_change_role, member_remove, ownership_transfer
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def _membership(user, tenant) -> Membership:
    return Membership.objects.get(user=user, tenant=tenant)


def test_owner_changes_a_role_and_it_is_audited(owner_client, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    m = _membership(dev, acme)
    response = owner_client.post(f"/t/{acme.slug}/members/{m.pk}/role/", {"role": "billing"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'id="messages"' in response.content.decode()
    assert _membership(dev, acme).role == Role.BILLING
    entry = AuditEntry.objects.get(action="member.role_change")
    assert entry.data == {"user": dev.email, "from": "developer", "to": "billing"} and entry.tenant == acme


@pytest.mark.parametrize("role", ["", "superuser", "OWNER"])
def test_malformed_role_is_refused(owner_client, acme, member_of, role):
    m = _membership(member_of(acme, Role.DEVELOPER), acme)
    response = owner_client.post(f"/t/{acme.slug}/members/{m.pk}/role/", {"role": role}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert _membership(m.user, acme).role == Role.DEVELOPER


def test_admin_cannot_touch_owners_or_make_one(acme, alice, member_of):
    admin = _membership(member_of(acme, Role.ADMIN), acme)
    dev = _membership(member_of(acme, Role.DEVELOPER), acme)
    owner = _membership(alice, acme)
    with pytest.raises(PermissionDenied):
        member_change_role(membership=dev, role=Role.OWNER, actor_role=admin.role)
    with pytest.raises(PermissionDenied):
        member_change_role(membership=owner, role=Role.ADMIN, actor_role=admin.role)
    with pytest.raises(PermissionDenied):
        member_remove(membership=owner, actor_role=admin.role)
    assert member_change_role(membership=dev, role=Role.AGENT, actor_role=admin.role).role == Role.AGENT


def test_there_is_always_an_owner(acme, alice, member_of):
    owner = _membership(alice, acme)
    with pytest.raises(ValidationError, match="at least one owner"):
        member_change_role(membership=owner, role=Role.ADMIN, actor_role=Role.OWNER)
    with pytest.raises(ValidationError, match="at least one owner"):
        member_remove(membership=owner, actor_role=Role.OWNER)
    second = _membership(member_of(acme, Role.OWNER), acme)
    member_change_role(membership=owner, role=Role.ADMIN, actor_role=Role.OWNER)  # fine: another owner remains
    with pytest.raises(ValidationError):
        member_remove(membership=second, actor_role=Role.OWNER)
    assert not AuditEntry.objects.filter(action="member.remove").exists()  # refused changes leave no entry


def test_removed_member_loses_access_on_the_next_request(client, owner_client, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    dev_client = sign_in(client.__class__(), dev)
    assert dev_client.get(f"/t/{acme.slug}/keys/").status_code == 200
    assert dev_client.get("/api/v1/keys").status_code == 200
    m = _membership(dev, acme)
    response = owner_client.post(f"/t/{acme.slug}/members/{m.pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=m.pk).exists()
    # The same session, still signed in, sees nothing of Acme any more.
    assert dev_client.get(f"/t/{acme.slug}/keys/").status_code == 404
    assert dev_client.get("/api/v1/keys").status_code == 404
    assert dev_client.get("/dashboard/").status_code == 200  # "no organisation yet"
    assert AuditEntry.objects.get(action="member.remove").data == {"user": dev.email, "role": "developer"}


def test_removing_a_member_needs_a_recent_reauthentication(client, alice, acme, member_of):
    from tests.conftest import add_totp

    add_totp(alice)
    sign_in(client, alice, reauthenticated=False)
    m = _membership(member_of(acme, Role.DEVELOPER), acme)
    response = client.post(f"/t/{acme.slug}/members/{m.pk}/remove/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/reauthenticate/")
    assert Membership.objects.filter(pk=m.pk).exists()


def test_ownership_transfer_swaps_roles(owner_client, alice, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    m = _membership(dev, acme)
    response = owner_client.post(f"/t/{acme.slug}/members/{m.pk}/transfer-ownership/", {"confirm": "on"})
    assert response.status_code == 302
    assert _membership(dev, acme).role == Role.OWNER and _membership(alice, acme).role == Role.ADMIN
    assert AuditEntry.objects.filter(action="member.ownership_transfer").count() == 1


def test_ownership_transfer_needs_the_confirmation(owner_client, acme, member_of):
    m = _membership(member_of(acme, Role.DEVELOPER), acme)
    response = owner_client.post(f"/t/{acme.slug}/members/{m.pk}/transfer-ownership/", {})
    assert response.status_code == 400 and "confirm" in response.context["form"].errors
    assert _membership(m.user, acme).role == Role.DEVELOPER


def test_ownership_transfer_to_self_is_refused(acme, alice):
    owner = _membership(alice, acme)
    with pytest.raises(ValidationError):
        ownership_transfer(tenant=acme, from_membership=owner, to_membership=owner)


def test_a_person_in_two_tenants_switches_between_them(client, alice, acme, bluegum):
    from tests.conftest import add_totp

    add_totp(alice)
    Membership.objects.create(tenant=bluegum, user=alice, role=Role.AGENT)
    sign_in(client, alice)
    page = client.get(f"/t/{acme.slug}/").content.decode()
    assert f'href="/t/{bluegum.slug}/"' in page and "Bluegum Calls" in page  # the switcher lists both
    assert client.get(f"/t/{bluegum.slug}/").status_code == 200
    # The console remembers the tenant last used, for the dashboard and the API.
    assert client.get("/dashboard/")["Location"] == f"/t/{bluegum.slug}/"
    assert client.get("/api/v1/tenant").json()["slug"] == bluegum.slug
    # As an agent in Bluegum, the keys page is not hers.
    assert client.get(f"/t/{bluegum.slug}/keys/").status_code == 403
