"""The API's door: resolve the tenant through ``tenants.access`` and ask the matrix, per HTTP method."""

from __future__ import annotations

from allauth.account.internal.flows.reauthentication import did_recently_reauthenticate
from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from tenants.access import resolve_tenant
from tenants.models import ApiKey
from tenants.permissions import required_scope


class InsufficientScope(exceptions.PermissionDenied):
    default_code = "insufficient_scope"


class ReauthenticationRequired(exceptions.PermissionDenied):
    default_detail = ("This action needs you to confirm your identity again. Sign in again in the console "
                      "(or use an API key), then retry.")
    default_code = "reauthentication_required"


class TenantMatrixPermission(BasePermission):
    """Views declare ``actions = {"GET": Action..., "POST": Action...}`` and, optionally,
    ``reauthenticate = {"DELETE", ...}`` (methods that need a recent re-authentication from console users).
    The resolved ``TenantAccess`` is left on ``request.tenant_access`` for the view."""

    def has_permission(self, request, view) -> bool:
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        if api_key is None and not request.user.is_authenticated:
            raise exceptions.NotAuthenticated(
                "Authenticate with an API key (Authorization: Bearer wtl_…) or a console session."
            )
        if api_key is not None:
            scope = required_scope(request.method)
            if scope not in api_key.scopes:
                raise InsufficientScope(f"This API key does not have the `{scope}` scope.")
        action = getattr(view, "actions", {}).get(request.method)
        if action is None:
            return True  # the method is not allowed; DRF answers 405
        access = resolve_tenant(request._request, api_key=api_key)
        request.tenant_access = access
        request._request.tenant_access = access
        if not access.can(action):
            raise exceptions.PermissionDenied(f"Your role ({access.role}) does not allow {action}.")
        if api_key is None and request.method in getattr(view, "reauthenticate", ()) and \
                not did_recently_reauthenticate(request._request):
            raise ReauthenticationRequired()
        return True
