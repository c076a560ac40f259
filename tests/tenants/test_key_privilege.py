"""A key is only as powerful as the role that touches it: a member may create, rotate, change or revoke only
keys whose every scope their role may grant, and the management scopes are for owners and admins. Checked in
the services for every role, scope set and action, then end to end through the console and the management API
(the developer who rotated an admin's management key and invited an admin with it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied

from audit.models import AuditEntry
from tenants import keys
from tenants.models import ApiKey, Invitation, Role
from tenants.permissions import API_KEY, SUPPORT, Action, can, grantable_scopes, may_manage_key
from tenants.services import api_key_create, api_key_revoke, api_key_rotate, api_key_set_limits
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db

ACTORS = [*(r.value for r in Role), SUPPORT, API_KEY]
SCOPE_SETS = {
    "inference": ["inference"],
    "management-read": ["management:read"],
    "management-write": ["management:write"],
    "everything": ["inference", "management:read", "management:write"],
}
ACTIONS = {
    "create": Action.KEYS_CREATE,
    "rotate": Action.KEYS_ROTATE,
    "update": Action.KEYS_LIMITS,
    "revoke": Action.KEYS_REVOKE,
}
# The rule, said independently of the code under test: management scopes only for owners and admins (and
# staff in a support session, whose only key action is revoking).
MANAGEMENT_ROLES = {Role.OWNER, Role.ADMIN, SUPPORT}


def _expected(actor: str, action: Action, scopes: list[str]) -> bool:
    touches_management = any(scope.startswith("management:") for scope in scopes)
    return can(actor, action) and (not touches_management or actor in MANAGEMENT_ROLES)


def _run(action: str, *, tenant, scopes: list[str], actor: str):
    """Take ``action`` as ``actor``; return (did it, the key afterwards)."""
    if action == "create":
        issued = api_key_create(tenant=tenant, name="made", scopes=scopes, actor_role=actor)
        return issued.api_key
    target = api_key_create(tenant=tenant, name="target", scopes=scopes).api_key  # made by an admin, say
    if action == "rotate":
        return api_key_rotate(api_key=target, grace=timedelta(0), actor_role=actor).api_key
    if action == "update":
        return api_key_set_limits(api_key=target, limits={"rpm_limit": 1}, actor_role=actor)
    return api_key_revoke(api_key=target, actor_role=actor)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("scopes", SCOPE_SETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_every_role_scope_and_key_action_through_the_services(acme, actor, scopes, action,
                                                              django_capture_on_commit_callbacks):
    scope_list, key_action = SCOPE_SETS[scopes], ACTIONS[action]
    allowed = _expected(actor, key_action, scope_list)
    assert may_manage_key(actor, key_action, scope_list) is allowed
    audit = {"create": "api_key.create", "rotate": "api_key.rotate", "update": "api_key.limits.update",
             "revoke": "api_key.revoke"}[action]
    before = AuditEntry.objects.filter(action=audit).count()
    with django_capture_on_commit_callbacks(execute=True):
        if allowed:
            _run(action, tenant=acme, scopes=scope_list, actor=actor)
        else:
            with pytest.raises(PermissionDenied):
                _run(action, tenant=acme, scopes=scope_list, actor=actor)
    assert AuditEntry.objects.filter(action=audit).count() == before + int(allowed)
    if not allowed and action != "create":
        target = ApiKey.objects.get(name="target")
        assert target.rotated_at is None and target.revoked_at is None and target.rpm_limit is None
    if not allowed and action == "create":
        assert not ApiKey.objects.filter(name="made").exists()


def test_only_owners_and_admins_may_grant_management_scopes():
    everything = set(ApiKey.Scope.values)
    assert grantable_scopes(Role.OWNER) == grantable_scopes(Role.ADMIN) == everything
    for role in (Role.DEVELOPER, Role.BILLING, Role.AGENT, API_KEY):
        assert grantable_scopes(role) == {"inference"}
    assert not may_manage_key(Role.DEVELOPER, Action.KEYS_REVOKE, ["inference", "a-scope-nobody-defined"])


# --- end to end: the probe ------------------------------------------------------------------------
@pytest.fixture
def admins_key(acme, member_of, issue_key):
    """An admin's management key (read and write), as the admin made it in the console."""
    admin = member_of(acme, Role.ADMIN)
    plaintext = issue_key(acme, name="admin automation", scopes=["management:read", "management:write"],
                          created_by=admin)
    return ApiKey.objects.get(key_id=keys.parse_key(plaintext)[0]), plaintext


def _unchanged(api_key: ApiKey) -> None:
    fresh = ApiKey.objects.get(pk=api_key.pk)
    assert (fresh.secret_hash, fresh.rotated_at, fresh.revoked_at, fresh.rpm_limit) == \
        (api_key.secret_hash, None, None, None)
    assert not AuditEntry.objects.filter(action__in=["api_key.rotate", "api_key.revoke", "api_key.limits.update"],
                                         data__key_id=api_key.key_id).exists()


def test_developer_cannot_rotate_change_or_revoke_an_admins_management_key_in_the_console(
        client, acme, member_of, admins_key):
    api_key, _plaintext = admins_key
    sign_in(client, member_of(acme, Role.DEVELOPER))
    base = f"/t/{acme.slug}/keys/{api_key.key_id}"
    page = client.get(f"{base}/").content.decode()
    assert "Rotate secret" not in page and "Revoke key" not in page  # not offered
    assert client.get(f"{base}/rotate/").status_code == 403
    response = client.post(f"{base}/rotate/", {"grace": "0"})
    assert response.status_code == 403 and b"wtl_" not in response.content
    assert client.post(f"{base}/revoke/").status_code == 403
    assert client.post(f"{base}/limits/", {"rpm_limit": "1"}).status_code == 403
    _unchanged(api_key)
    # and the console never let a developer invite anyone, an admin least of all
    assert client.post(f"/t/{acme.slug}/invitations/", {"email": "mallory@evil.example",
                                                       "role": "admin"}).status_code == 403
    assert not Invitation.objects.exists()


def test_developer_cannot_rotate_an_admins_management_key_or_invite_an_admin_through_the_api(
        api_client, acme, member_of, admins_key, django_capture_on_commit_callbacks):
    api_key, _plaintext = admins_key
    sign_in(api_client, member_of(acme, Role.DEVELOPER))
    response = api_client.post(f"/api/v1/keys/{api_key.key_id}/rotate", {"grace_seconds": 0}, format="json")
    assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"
    assert "secret" not in response.json()
    assert api_client.delete(f"/api/v1/keys/{api_key.key_id}").status_code == 403
    assert api_client.patch(f"/api/v1/keys/{api_key.key_id}", {"limits": {"rpm_limit": 1}},
                            format="json").status_code == 403
    assert api_client.post("/api/v1/keys", {"name": "mine", "scopes": ["management:write"]},
                           format="json").status_code == 403
    _unchanged(api_key)
    assert api_client.post("/api/v1/invitations", {"email": "mallory@evil.example", "role": "admin"},
                           format="json").status_code == 403
    # The only key a developer can make is an inference key, and it opens no management door.
    with django_capture_on_commit_callbacks(execute=True):
        mine = api_client.post("/api/v1/keys", {"name": "mine", "scopes": ["inference"]}, format="json")
    assert mine.status_code == 201
    response = api_client.post("/api/v1/invitations", {"email": "mallory@evil.example", "role": "admin"},
                               format="json", HTTP_AUTHORIZATION=f"Bearer {mine.json()['secret']}")
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_a_management_key_cannot_mint_or_take_over_a_management_key(api_client, acme, admins_key, issue_key,
                                                                    django_capture_on_commit_callbacks):
    api_key, plaintext = admins_key
    other = ApiKey.objects.get(key_id=keys.parse_key(issue_key(acme, scopes=["management:read"]))[0])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}
    for scopes in (["management:write"], ["management:read"], ["inference", "management:read"]):
        response = api_client.post("/api/v1/keys", {"name": "minted", "scopes": scopes}, format="json", **auth)
        assert response.status_code == 403, scopes
    for target in (api_key, other):  # not even itself: a leaked key cannot lock its owner out
        path = f"/api/v1/keys/{target.key_id}"
        assert api_client.post(f"{path}/rotate", {"grace_seconds": 0}, format="json", **auth).status_code == 403
        assert api_client.delete(path, **auth).status_code == 403
        assert api_client.patch(path, {"limits": {"rpm_limit": 1}}, format="json", **auth).status_code == 403
        _unchanged(target)
    assert not ApiKey.objects.filter(name="minted").exists()
    # inference-only keys are still its to manage
    inference = keys.parse_key(issue_key(acme, name="ivr"))[0]
    with django_capture_on_commit_callbacks(execute=True):
        rotated = api_client.post(f"/api/v1/keys/{inference}/rotate", {"grace_seconds": 0}, format="json", **auth)
    assert rotated.status_code == 200 and rotated.json()["secret"].startswith(f"wtl_{inference}_")


def test_an_admin_may_rotate_and_revoke_a_management_key(owner_client, acme, admins_key,
                                                         django_capture_on_commit_callbacks):
    api_key, _plaintext = admins_key
    base = f"/t/{acme.slug}/keys/{api_key.key_id}"
    assert "Rotate secret" in owner_client.get(f"{base}/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        assert owner_client.post(f"{base}/rotate/", {"grace": "0"}).status_code == 200
        assert owner_client.post(f"{base}/revoke/").status_code == 302
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is not None
