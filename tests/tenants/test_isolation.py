"""Tenant isolation and the permission matrix, over every console page and every management API endpoint.

- another tenant's pages and objects answer 404 (their existence is not revealed);
- anonymous callers are sent to sign in (console) or get 401 (API);
- each role can do exactly what ``tenants.permissions.MATRIX`` says: allowed actions succeed, the rest are 403.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.core import mail

from tenants.models import ApiKey, Invitation, Membership, Role
from tenants.permissions import API_KEY, Action, can
from tenants.services import member_invite
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db

ROLES = [r.value for r in Role]


@dataclass
class World:
    """Acme with a key, a developer (the target of member actions) and a pending invitation; Bluegum the same."""

    acme: object
    bluegum: object
    key: ApiKey
    target: Membership
    invitation: Invitation
    other_key: ApiKey
    other_member: Membership
    other_invitation: Invitation
    ids: dict = field(default_factory=dict)

    def fill(self, template: str, *, foreign: bool = False) -> str:
        return template.format(
            slug=self.acme.slug,
            key=(self.other_key if foreign else self.key).key_id,
            member=(self.other_member if foreign else self.target).pk,
            invitation=(self.other_invitation if foreign else self.invitation).pk,
        )


@pytest.fixture
def world(acme, bluegum, issue_key, member_of, bob, unthrottled, django_capture_on_commit_callbacks) -> World:
    unthrottled(acme)  # on a plan above every key limit the matrix sets, so only permissions decide
    unthrottled(bluegum)
    issue_key(acme, name="acme key")
    issue_key(bluegum, name="bluegum key")
    target_user = member_of(acme, Role.DEVELOPER, email="acme.target@acme.example")
    other_user = member_of(bluegum, Role.DEVELOPER, email="bluegum.target@bluegum.example")
    with django_capture_on_commit_callbacks(execute=True):
        invitation = member_invite(tenant=acme, email="new@acme.example", role=Role.AGENT).invitation
        other_invitation = member_invite(tenant=bluegum, email="new@bluegum.example", role=Role.AGENT).invitation
    mail.outbox.clear()
    return World(
        acme=acme, bluegum=bluegum,
        key=ApiKey.objects.get(tenant=acme), other_key=ApiKey.objects.get(tenant=bluegum),
        target=Membership.objects.get(user=target_user), other_member=Membership.objects.get(user=other_user),
        invitation=invitation, other_invitation=other_invitation,
    )


# --- console pages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    name: str
    method: str
    path: str
    action: Action
    data: dict = field(default_factory=dict)
    foreign_object: bool = False  # the path names an object that can belong to another tenant

    def __str__(self) -> str:
        return self.name


PAGES = [
    Page("overview", "GET", "/t/{slug}/", Action.TENANT_VIEW),
    Page("onboarding", "GET", "/t/{slug}/welcome/", Action.TENANT_VIEW),
    Page("settings", "GET", "/t/{slug}/settings/", Action.TENANT_VIEW),
    Page("settings-save", "POST", "/t/{slug}/settings/", Action.TENANT_UPDATE,
         {"name": "Acme Renamed", "billing_email": "b@acme.example", "abn": "", "state": "NSW"}),
    Page("members", "GET", "/t/{slug}/members/", Action.MEMBERS_VIEW),
    Page("member-role", "POST", "/t/{slug}/members/{member}/role/", Action.MEMBERS_CHANGE_ROLE, {"role": "billing"},
         foreign_object=True),
    Page("member-remove-confirm", "GET", "/t/{slug}/members/{member}/remove/", Action.MEMBERS_REMOVE,
         foreign_object=True),
    Page("member-remove", "POST", "/t/{slug}/members/{member}/remove/", Action.MEMBERS_REMOVE, foreign_object=True),
    Page("ownership-confirm", "GET", "/t/{slug}/members/{member}/transfer-ownership/", Action.OWNERSHIP_TRANSFER,
         foreign_object=True),
    Page("ownership-transfer", "POST", "/t/{slug}/members/{member}/transfer-ownership/",
         Action.OWNERSHIP_TRANSFER, {"confirm": "on"}, foreign_object=True),
    Page("invite", "POST", "/t/{slug}/invitations/", Action.INVITATIONS_MANAGE,
         {"email": "someone@acme.example", "role": "developer"}),
    Page("invitation-revoke", "POST", "/t/{slug}/invitations/{invitation}/revoke/", Action.INVITATIONS_MANAGE,
         foreign_object=True),
    Page("keys", "GET", "/t/{slug}/keys/", Action.KEYS_VIEW),
    Page("key-new", "GET", "/t/{slug}/keys/new/", Action.KEYS_CREATE),
    Page("key-create", "POST", "/t/{slug}/keys/new/", Action.KEYS_CREATE, {"name": "ivr", "scopes": ["inference"]}),
    Page("key-detail", "GET", "/t/{slug}/keys/{key}/", Action.KEYS_VIEW, foreign_object=True),
    Page("key-revoke", "POST", "/t/{slug}/keys/{key}/revoke/", Action.KEYS_REVOKE, foreign_object=True),
    Page("key-rotate-form", "GET", "/t/{slug}/keys/{key}/rotate/", Action.KEYS_ROTATE, foreign_object=True),
    Page("key-rotate", "POST", "/t/{slug}/keys/{key}/rotate/", Action.KEYS_ROTATE, {"grace": "0"},
         foreign_object=True),
    Page("usage", "GET", "/t/{slug}/usage/", Action.USAGE_VIEW),
    Page("limits", "GET", "/t/{slug}/limits/", Action.LIMITS_VIEW),
    Page("billing", "GET", "/t/{slug}/billing/", Action.BILLING_VIEW),
    Page("billing-usage-csv", "GET", "/t/{slug}/billing/usage.csv?start=2026-11-01&end=2026-11-30",
         Action.BILLING_VIEW),
    Page("key-limits", "POST", "/t/{slug}/keys/{key}/limits/", Action.KEYS_LIMITS, {"rpm_limit": "30"},
         foreign_object=True),
    # Subscribing (without Stripe here: each says payments are not configured, to those allowed to ask).
    Page("billing-checkout", "POST", "/t/{slug}/billing/checkout/trial/", Action.BILLING_MANAGE),
    Page("billing-portal", "POST", "/t/{slug}/billing/portal/", Action.BILLING_MANAGE),
    Page("billing-return", "GET", "/t/{slug}/billing/return/?session=00000000-0000-4000-8000-000000000000",
         Action.BILLING_MANAGE),
    Page("billing-cancelled", "GET", "/t/{slug}/billing/cancelled/?session=00000000-0000-4000-8000-000000000000",
         Action.BILLING_MANAGE),
]


def _request(client, page: Page, path: str):
    if page.method == "GET":
        return client.get(path)
    return client.post(path, page.data)


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_console_page_sends_anonymous_visitors_to_sign_in(client, world, page):
    response = _request(client, page, world.fill(page.path))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_console_page_of_another_tenant_is_404(client, world, bob, page):
    from tests.conftest import add_totp

    add_totp(bob)
    sign_in(client, bob)  # bob owns Bluegum: every role-level check would pass if he were an Acme member
    response = _request(client, page, world.fill(page.path))
    assert response.status_code == 404


@pytest.mark.parametrize("page", [p for p in PAGES if p.foreign_object], ids=str)
def test_another_tenants_object_under_my_tenant_is_404(owner_client, world, page):
    response = _request(owner_client, page, world.fill(page.path, foreign=True))
    assert response.status_code == 404


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", PAGES, ids=str)
def test_console_page_follows_the_matrix(client, world, member_of, role, page, django_capture_on_commit_callbacks):
    user = member_of(world.acme, role)
    sign_in(client, user)
    with django_capture_on_commit_callbacks(execute=True):
        response = _request(client, page, world.fill(page.path))
    if can(role, page.action):
        assert response.status_code in (200, 201, 302), (role, page.name, response.status_code)
        if response.status_code == 302:
            assert not response["Location"].startswith(("/accounts/", "/account/")), response["Location"]
    else:
        assert response.status_code == 403, (role, page.name, response.status_code)


def test_developer_cannot_grant_management_scopes_in_the_console(client, world, member_of):
    sign_in(client, member_of(world.acme, Role.DEVELOPER))
    response = client.post(f"/t/{world.acme.slug}/keys/new/", {"name": "x", "scopes": ["management:write"]})
    assert response.status_code == 400
    assert "scopes" in response.context["form"].errors
    assert not ApiKey.objects.filter(name="x").exists()


# --- management API --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    action: Action
    data: dict | None = None
    ok: int = 200
    foreign_object: bool = False

    def __str__(self) -> str:
        return self.name


ENDPOINTS = [
    Endpoint("tenant", "GET", "/api/v1/tenant", Action.TENANT_VIEW),
    Endpoint("tenant-update", "PATCH", "/api/v1/tenant", Action.TENANT_UPDATE, {"name": "Acme Two"}),
    Endpoint("members", "GET", "/api/v1/members", Action.MEMBERS_VIEW),
    Endpoint("member", "GET", "/api/v1/members/{member}", Action.MEMBERS_VIEW, foreign_object=True),
    Endpoint("member-role", "PATCH", "/api/v1/members/{member}", Action.MEMBERS_CHANGE_ROLE, {"role": "billing"},
             foreign_object=True),
    Endpoint("member-remove", "DELETE", "/api/v1/members/{member}", Action.MEMBERS_REMOVE, ok=204,
             foreign_object=True),
    Endpoint("member-transfer", "POST", "/api/v1/members/{member}/transfer-ownership", Action.OWNERSHIP_TRANSFER,
             {}, foreign_object=True),
    Endpoint("invitations", "GET", "/api/v1/invitations", Action.INVITATIONS_VIEW),
    Endpoint("invitation-create", "POST", "/api/v1/invitations", Action.INVITATIONS_MANAGE,
             {"email": "someone@acme.example", "role": "developer"}, ok=201),
    Endpoint("invitation", "GET", "/api/v1/invitations/{invitation}", Action.INVITATIONS_VIEW, foreign_object=True),
    Endpoint("invitation-revoke", "DELETE", "/api/v1/invitations/{invitation}", Action.INVITATIONS_MANAGE,
             foreign_object=True),
    Endpoint("keys", "GET", "/api/v1/keys", Action.KEYS_VIEW),
    Endpoint("key-create", "POST", "/api/v1/keys", Action.KEYS_CREATE, {"name": "ivr"}, ok=201),
    Endpoint("key", "GET", "/api/v1/keys/{key}", Action.KEYS_VIEW, foreign_object=True),
    Endpoint("key-revoke", "DELETE", "/api/v1/keys/{key}", Action.KEYS_REVOKE, foreign_object=True),
    Endpoint("key-rotate", "POST", "/api/v1/keys/{key}/rotate", Action.KEYS_ROTATE, {"grace_seconds": 60},
             foreign_object=True),
    Endpoint("usage", "GET", "/api/v1/usage", Action.USAGE_VIEW),
    Endpoint("limits", "GET", "/api/v1/limits", Action.LIMITS_VIEW),
    Endpoint("key-limits", "PATCH", "/api/v1/keys/{key}", Action.KEYS_LIMITS, {"limits": {"rpm_limit": 30}},
             foreign_object=True),
]


def _call(api_client, endpoint: Endpoint, path: str, **extra):
    method = getattr(api_client, endpoint.method.lower())
    if endpoint.method in ("GET", "DELETE"):
        return method(path, **extra)
    return method(path, endpoint.data, format="json", **extra)


def _assert_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["message"]
    return error


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_api_endpoint_without_credentials_is_401(api_client, world, endpoint):
    _assert_error(_call(api_client, endpoint, world.fill(endpoint.path)), 401)


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.foreign_object], ids=str)
def test_api_object_of_another_tenant_is_404_by_session(api_client, world, alice, endpoint):
    from tests.conftest import add_totp

    add_totp(alice)
    sign_in(api_client, alice)
    error = _assert_error(_call(api_client, endpoint, world.fill(endpoint.path, foreign=True)), 404)
    assert error["code"] == "not_found"


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.foreign_object and can(API_KEY, e.action)], ids=str)
def test_api_object_of_another_tenant_is_404_by_key(api_client, world, management_key, endpoint):
    key = management_key(world.acme)
    _assert_error(_call(api_client, endpoint, world.fill(endpoint.path, foreign=True),
                        HTTP_AUTHORIZATION=f"Bearer {key}"), 404)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_api_endpoint_follows_the_matrix_for_console_users(api_client, world, member_of, role, endpoint,
                                                          django_capture_on_commit_callbacks):
    sign_in(api_client, member_of(world.acme, role))
    with django_capture_on_commit_callbacks(execute=True):
        response = _call(api_client, endpoint, world.fill(endpoint.path))
    if can(role, endpoint.action):
        assert response.status_code == endpoint.ok, (role, endpoint.name, response.content[:300])
    else:
        assert _assert_error(response, 403)["type"] == "permission_error"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_api_endpoint_follows_the_matrix_for_api_keys(api_client, world, management_key, endpoint,
                                                      django_capture_on_commit_callbacks):
    key = management_key(world.acme)
    with django_capture_on_commit_callbacks(execute=True):
        response = _call(api_client, endpoint, world.fill(endpoint.path), HTTP_AUTHORIZATION=f"Bearer {key}")
    if can(API_KEY, endpoint.action):
        assert response.status_code == endpoint.ok, (endpoint.name, response.content[:300])
    else:
        _assert_error(response, 403)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_api_key_scopes_gate_reads_and_writes(api_client, world, issue_key, endpoint):
    read_only = issue_key(world.acme, scopes=["management:read"])
    inference_only = issue_key(world.acme, scopes=["inference"])
    response = _call(api_client, endpoint, world.fill(endpoint.path), HTTP_AUTHORIZATION=f"Bearer {inference_only}")
    assert _assert_error(response, 403)["code"] == "insufficient_scope"
    response = _call(api_client, endpoint, world.fill(endpoint.path), HTTP_AUTHORIZATION=f"Bearer {read_only}")
    if endpoint.method == "GET":
        assert response.status_code == 200
    else:
        assert _assert_error(response, 403)["code"] == "insufficient_scope"


def test_another_tenants_key_never_reaches_my_tenant(api_client, world, management_key):
    key = management_key(world.bluegum)
    response = api_client.get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert {k["key_id"] for k in response.json()["results"]} == {world.other_key.key_id, key.split("_")[1]}
    assert api_client.get("/api/v1/tenant", HTTP_AUTHORIZATION=f"Bearer {key}").json()["slug"] == world.bluegum.slug


def test_limits_never_show_another_tenants_keys_or_counts(api_client, owner_client, world, management_key):
    key = management_key(world.acme, write=False)
    body = api_client.get("/api/v1/limits", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert world.other_key.key_id not in {k["key_id"] for k in body["keys"]}
    page = owner_client.get(f"/t/{world.acme.slug}/limits/").content.decode()
    assert world.other_key.key_id not in page and "bluegum key" not in page
