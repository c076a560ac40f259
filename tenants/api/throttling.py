"""Request rates per principal (an API key, or a console user), counted in the cache: Redis when configured,
so the limit holds across workers."""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from tenants.models import ApiKey
from tenants.permissions import SAFE_METHODS


class ManagementThrottle(SimpleRateThrottle):
    scope = "management"
    setting = "MANAGEMENT_API_THROTTLE_RATE"

    def get_rate(self) -> str:
        return getattr(settings, self.setting)

    def get_cache_key(self, request, view) -> str | None:
        if isinstance(request.auth, ApiKey):
            ident = f"key:{request.auth.key_id}"
        elif request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return f"{settings.REDIS_KEY_PREFIX}throttle:{self.scope}:{ident}"


class ManagementWriteThrottle(ManagementThrottle):
    scope = "management-write"
    setting = "MANAGEMENT_API_WRITE_THROTTLE_RATE"

    def allow_request(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return super().allow_request(request, view)
