"""R-AUD-4: security events reach the audit trail through ``audit.services.record``, in the same transaction
as the change they describe."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction

from audit.models import AuditEntry
from tenants.models import ApiKey, Role
from tenants.services import (
    act_as_start,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    member_change_role,
    member_invite,
    member_remove,
    tenant_set_status,
)
from tests.conftest import PASSWORD, add_totp, sign_in
from tests.e2e.helpers import totp

pytestmark = pytest.mark.django_db


def _actions() -> list[str]:
    return list(AuditEntry.objects.order_by("id").values_list("action", flat=True))


def test_login_success_failure_and_logout(client, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    client.post("/accounts/login/", {"login": dev.email, "password": "wrong"})
    failure = AuditEntry.objects.get(action="auth.login_failed")
    assert failure.data == {"email": dev.email} and failure.actor is None and failure.ip == "127.0.0.1"
    assert "wrong" not in str(failure.data)
    client.post("/accounts/login/", {"login": dev.email, "password": PASSWORD})
    login = AuditEntry.objects.get(action="auth.login")
    assert login.actor == dev and login.data["methods"] == ["password"]
    client.post("/accounts/logout/")
    assert AuditEntry.objects.filter(action="auth.logout", actor=dev).exists()


def test_mfa_failure_and_success_at_login(client, alice, acme):
    add_totp(alice)
    response = client.post("/accounts/login/", {"login": alice.email, "password": PASSWORD})
    assert response["Location"] == "/accounts/2fa/authenticate/"
    client.post("/accounts/2fa/authenticate/", {"code": "000000"})
    assert AuditEntry.objects.get(action="mfa.fail").actor == alice
    client.post("/accounts/2fa/authenticate/", {"code": totp("JBSWY3DPEHPK3PXP")})
    used = AuditEntry.objects.get(action="mfa.use")
    assert used.data["type"] == "totp" and used.data["reauthenticated"] is False
    assert AuditEntry.objects.get(action="auth.login").data["methods"] == ["password", "totp"]


def test_mfa_activation_is_audited(client, acme, member_of, django_capture_on_commit_callbacks):
    dev = member_of(acme, Role.DEVELOPER)
    sign_in(client, dev)
    secret = client.get("/accounts/2fa/totp/activate/").context["form"].secret
    # allauth announces the new authenticator once its transaction has committed.
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/accounts/2fa/totp/activate/", {"code": totp(secret)})
    added = AuditEntry.objects.filter(action="mfa.add", actor=dev)
    assert {e.data["type"] for e in added} == {"totp", "recovery_codes"}


def test_password_change_is_audited(client, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    sign_in(client, dev)
    client.post("/accounts/password/change/", {"oldpassword": PASSWORD, "password1": "another-long-passphrase-77",
                                                "password2": "another-long-passphrase-77"})
    assert AuditEntry.objects.filter(action="auth.password_change", actor=dev).exists()


def test_every_tenant_change_writes_its_entry(alice, acme, member_of, staff):
    dev = member_of(acme, Role.DEVELOPER)
    membership = dev.memberships.get()
    member_change_role(membership=membership, role=Role.BILLING, actor=alice, actor_role=Role.OWNER)
    member_invite(tenant=acme, email="new@acme.example", role=Role.AGENT, invited_by=alice, inviter_role=Role.OWNER)
    issued = api_key_create(tenant=acme, name="k", created_by=alice)
    api_key_rotate(api_key=issued.api_key, grace=timedelta(0), actor=alice)
    api_key_revoke(api_key=issued.api_key, actor=alice)
    member_remove(membership=membership, actor=alice, actor_role=Role.OWNER)
    tenant_set_status(tenant=acme, status="suspended", reason="abuse", actor=staff)
    act_as_start(staff_user=staff, tenant=acme, reason="Ticket 12")
    assert _actions()[-8:] == [
        "member.role_change", "invitation.create", "api_key.create", "api_key.rotate", "api_key.revoke",
        "member.remove", "tenant.status.suspended", "staff.act_as.start",
    ]
    assert all(e.tenant == acme for e in AuditEntry.objects.filter(action__in=_actions()[-8:]))


def test_entry_and_change_commit_or_roll_back_together(alice, acme):
    def create_then_fail():
        with transaction.atomic():
            api_key_create(tenant=acme, name="k", created_by=alice)
            raise RuntimeError("the caller's transaction fails after the service")

    with pytest.raises(RuntimeError):
        create_then_fail()
    assert not ApiKey.objects.exists()
    assert not AuditEntry.objects.filter(action="api_key.create").exists()


def test_no_entry_for_a_refused_change(alice, acme):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        member_change_role(membership=alice.memberships.get(), role=Role.ADMIN, actor=alice, actor_role=Role.OWNER)
    assert not AuditEntry.objects.filter(action="member.role_change").exists()
