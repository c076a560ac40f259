"""Who is calling the management API: an API key with a management scope, or a console session."""

from __future__ import annotations

import hmac
import time

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from tenants import keys
from tenants.models import ApiKey


class AccountSuspended(exceptions.APIException):
    status_code = 402
    default_detail = ("Your organisation's access is suspended. Sign in to the Wattle console to see why and how "
                      "to restore it.")
    default_code = "account_suspended"


def key_matches(api_key: ApiKey, secret: str) -> bool:
    """The current secret, or the previous one during a rotation's grace period; constant-time either way."""
    digest = keys.hash_secret(secret)
    if hmac.compare_digest(digest, api_key.secret_hash):
        return True
    return api_key.previous_secret_active and hmac.compare_digest(digest, api_key.previous_secret_hash)


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer wtl_<key_id>_<secret>``: the same keys as ``/v1``, checked against the database
    (the control plane owns it), with the same answers for revoked, expired and suspended."""

    keyword = "bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != self.keyword:
            return None
        token = token.strip()
        parsed = keys.parse_key(token)
        if parsed is None:
            raise exceptions.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        key_id, secret = parsed
        api_key = ApiKey.objects.select_related("tenant").filter(key_id=key_id).first()
        if api_key is None or not key_matches(api_key, secret):
            # Same work for unknown ids, so timing does not reveal which key ids exist.
            if api_key is None:
                hmac.compare_digest(keys.hash_secret(secret), "0" * 64)
            raise exceptions.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.", code="invalid_api_key")
        if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed("This API key has expired.", code="invalid_api_key")
        if not api_key.tenant.is_active:
            raise AccountSuspended()
        # For the audit trail: changes made through this request name the key.
        request._request.wattle_api_key_id = api_key.key_id
        request._request.wattle_auth_at = time.time()
        return AnonymousUser(), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="wattle"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "wtl_<key_id>_<secret>",
            "description": "An API key with the management:read (GET) or management:write (other methods) scope.",
        }
