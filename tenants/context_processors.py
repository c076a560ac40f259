from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from tenants.access import SESSION_TENANT, active_act_as


def console(request) -> dict:
    """The layout's view of the console: the tenant being shown (set by the view), the switcher's list of
    the user's tenants, and any staff "act as" session."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}

    def memberships():
        from tenants.selectors import memberships_for_user

        return memberships_for_user(user=user)

    switcher = SimpleLazyObject(memberships)

    def current_tenant():
        """Outside a tenant's pages (the account pages), the organisation the console last showed, else the
        first: the header names it and "Back to the console" returns to it."""
        slug = request.session.get(SESSION_TENANT)
        mine = [m.tenant for m in switcher]
        return next((t for t in mine if t.slug == slug), mine[0] if mine else None)

    return {
        "access": getattr(request, "tenant_access", None),
        "switcher_memberships": switcher,
        "current_tenant": SimpleLazyObject(current_tenant),
        "act_as": active_act_as(request),
    }
