"""The key format (``core.keys``) with this deployment's pepper (``API_KEY_PEPPER``), for the control plane."""

from __future__ import annotations

import hmac

from django.conf import settings

from core.keys import KEY_ID_LENGTH, KEY_PREFIX, format_key, new_key_id, new_secret, parse_key, secret_hasher

__all__ = ["KEY_ID_LENGTH", "KEY_PREFIX", "format_key", "hash_secret", "new_key_id", "new_secret", "parse_key",
           "secret_matches"]


def hash_secret(secret: str) -> str:
    return secret_hasher(settings.API_KEY_PEPPER)(secret)


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
