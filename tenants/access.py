"""The one place that answers "which tenant is this request about, and as what role?".

Every console page and every management API endpoint goes through ``resolve_tenant``. It re-reads the
membership on each request, so a removed member loses access at once, and it 404s for anyone who is not a
member (another tenant's existence is not revealed). It also enforces the MFA rules (R-SEC-1):

- owners and admins must have a second factor (any kind) before any page of their tenant;
- platform staff must have a WebAuthn authenticator, and have used it in this session, before any staff page
  or an "act as" session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from allauth.account.internal.flows.login import get_authentication_records
from allauth.mfa.models import Authenticator
from allauth.mfa.utils import is_mfa_enabled
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.urls import reverse
from django.utils import timezone

from tenants import services
from tenants.models import ApiKey, Membership, SupportSession, Tenant
from tenants.permissions import API_KEY, MFA_REQUIRED_ROLES, SUPPORT, Action, actions_for, can, key_actions

SESSION_TENANT = "wattle_tenant"
SESSION_ACT_AS = "wattle_act_as"


class MfaRequired(Exception):
    """The user must set up (``kind="setup"``) or use (``kind="webauthn"``) a second factor first."""

    def __init__(self, *, staff: bool, kind: str = "setup") -> None:
        super().__init__("Two-factor authentication is required for this page.")
        self.staff = staff
        self.kind = kind

    def redirect_url(self, next_url: str) -> str:
        if self.kind == "webauthn":
            # Staff who have a passkey but signed in another way confirm with the passkey.
            return f"{reverse('mfa_reauthenticate_webauthn')}?{urlencode({'next': next_url})}"
        return f"{reverse('mfa_required')}?{urlencode({'next': next_url})}"


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str
    membership: Membership | None = None
    acting_as: bool = False
    api_key: ApiKey | None = None
    actions: frozenset[str] = field(default_factory=frozenset)

    def can(self, action: Action | str) -> bool:
        return can(self.role, action)

    def require(self, action: Action | str) -> None:
        if not self.can(action):
            raise PermissionDenied(f"Your role ({self.role}) does not allow {action}.")

    def key_actions(self, api_key: ApiKey) -> frozenset[str]:
        """The key actions this caller may take on ``api_key`` (its scopes decide too, not only the role)."""
        return key_actions(self.role, api_key.scopes)


# --- MFA rules --------------------------------------------------------------------------------------
def staff_mfa_state(request: HttpRequest) -> str | None:
    """None when a staff member may proceed; otherwise what is missing: "setup" or "webauthn" (use it)."""
    user = request.user
    if not is_mfa_enabled(user, types=[Authenticator.Type.WEBAUTHN]):
        return "setup"
    records = get_authentication_records(request, user)
    if any(r.get("method") == "mfa" and r.get("type") == Authenticator.Type.WEBAUTHN for r in records):
        return None
    return "webauthn"


def require_staff_mfa(request: HttpRequest) -> None:
    state = staff_mfa_state(request)
    if state is not None:
        raise MfaRequired(staff=True, kind=state)


def role_mfa_satisfied(user, role: str) -> bool:
    return role not in MFA_REQUIRED_ROLES or is_mfa_enabled(user)


# --- act as ----------------------------------------------------------------------------------------
def active_act_as(request: HttpRequest) -> dict | None:
    """The staff member's current "act as" grant, if its ``SupportSession`` is open and not expired.

    An expired one is closed here (its end audited) when the staff member's next request notices it; the
    periodic job closes the ones nobody comes back to. Either way, once."""
    if not getattr(request, "user", None) or not request.user.is_authenticated or not request.user.is_staff:
        return None
    grant = request.session.get(SESSION_ACT_AS)
    if not grant:
        return None
    if grant.get("staff") != str(request.user.pk):
        request.session.pop(SESSION_ACT_AS, None)
        return None
    session_id = grant.get("session")
    expires_at = (SupportSession.objects.filter(pk=session_id, staff=request.user, ended_at__isnull=True)
                  .values_list("expires_at", flat=True).first() if session_id else None)
    if expires_at is None:  # ended elsewhere (or a grant from before sessions were recorded)
        request.session.pop(SESSION_ACT_AS, None)
        return None
    if expires_at <= timezone.now() or grant.get("expires", 0) <= time.time():
        services.act_as_end(session_id=session_id, end=SupportSession.End.EXPIRED, request=request)
        request.session.pop(SESSION_ACT_AS, None)
        return None
    return grant


# --- the resolver ----------------------------------------------------------------------------------
def resolve_tenant(request: HttpRequest, slug: str | None = None, *, api_key: ApiKey | None = None) -> TenantAccess:
    """Return the caller's access to the tenant named by ``slug`` (or the current one), or raise Http404.

    ``api_key`` is the management API's key principal: it reaches only its own tenant.
    """
    if api_key is not None:
        tenant = api_key.tenant
        if slug is not None and slug != tenant.slug:
            raise Http404
        return TenantAccess(tenant=tenant, role=API_KEY, api_key=api_key, actions=actions_for(API_KEY))

    user = request.user
    if not user.is_authenticated:
        raise Http404
    if slug is None:
        slug = request.session.get(SESSION_TENANT)
    membership = None
    if slug is not None:
        membership = Membership.objects.select_related("tenant").filter(tenant__slug=slug, user=user).first()
    elif (first := Membership.objects.select_related("tenant").filter(user=user).order_by("tenant__name").first()):
        membership = first

    if membership is not None:
        access = TenantAccess(tenant=membership.tenant, role=membership.role, membership=membership,
                              actions=actions_for(membership.role))
        if not role_mfa_satisfied(user, membership.role):
            raise MfaRequired(staff=False)
    else:
        grant = active_act_as(request)
        if grant is None or slug is None or grant.get("slug") != slug:
            if slug is not None and request.session.get(SESSION_TENANT) == slug:
                request.session.pop(SESSION_TENANT, None)
            raise Http404
        tenant = Tenant.objects.filter(pk=grant["tenant"]).first()
        if tenant is None:
            raise Http404
        require_staff_mfa(request)
        access = TenantAccess(tenant=tenant, role=SUPPORT, acting_as=True, actions=actions_for(SUPPORT))

    if request.session.get(SESSION_TENANT) != access.tenant.slug:
        request.session[SESSION_TENANT] = access.tenant.slug
    return access
