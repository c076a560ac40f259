from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from tenants.access import active_act_as


def console(request) -> dict:
    """The layout's view of the console: the tenant being shown (set by the view), the switcher's list of
    the user's tenants, and any staff "act as" session."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}

    def memberships():
        from tenants.selectors import memberships_for_user

        return memberships_for_user(user=user)

    return {
        "access": getattr(request, "tenant_access", None),
        "switcher_memberships": SimpleLazyObject(memberships),
        "act_as": active_act_as(request),
    }
