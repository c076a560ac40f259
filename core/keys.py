"""API key format and hashing, shared by the control plane (which issues keys) and the data plane.

A key reads ``wtl_<key_id>_<secret>``: the key id is public (shown in lists, logged, used to find the record);
the secret is only ever stored as HMAC-SHA256 under a server-side pepper.
"""

from __future__ import annotations

import hmac
import secrets
import string
from collections.abc import Callable

KEY_PREFIX = "wtl_"
KEY_ID_LENGTH = 12
_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_BYTES = 32
# The key id of the console playground's requests (``inference.consumers``): usage events carry it so the
# playground's traffic is billed to its tenant and shown apart from its API keys. Shorter than an issued key
# id, so it never names one (nor parses as one).
PLAYGROUND_KEY_ID = "playground"
PLAYGROUND_KEY_NAME = "Playground"
# The key id of post-call analytics' model requests (``inference.analytics``), billed to the conversation's tenant.
ANALYTICS_KEY_ID = "analytics"
ANALYTICS_KEY_NAME = "Post-call analytics"
# Every console surface's key id and the name usage shows it under (none is a key anyone holds).
SURFACE_KEY_NAMES = {PLAYGROUND_KEY_ID: PLAYGROUND_KEY_NAME, ANALYTICS_KEY_ID: ANALYTICS_KEY_NAME}


def new_key_id() -> str:
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(raw: str) -> tuple[str, str] | None:
    """Split a presented key into (key_id, secret); None when it isn't shaped like one of ours."""
    if not raw.startswith(KEY_PREFIX) or len(raw) < len(KEY_PREFIX) + KEY_ID_LENGTH + 2:
        return None
    key_id = raw[len(KEY_PREFIX) : len(KEY_PREFIX) + KEY_ID_LENGTH]
    if raw[len(KEY_PREFIX) + KEY_ID_LENGTH] != "_":
        return None
    secret = raw[len(KEY_PREFIX) + KEY_ID_LENGTH + 1 :]
    if not secret or not all(c in _KEY_ID_ALPHABET for c in key_id):
        return None
    return key_id, secret


def secret_hasher(pepper: str) -> Callable[[str], str]:
    """HMAC-SHA256 of a secret under ``pepper``, hex: what is stored and published (the one-shot C HMAC, with
    the pepper encoded once, for the data plane's per-request check)."""
    key = pepper.encode()

    def hashed(secret: str) -> str:
        return hmac.digest(key, secret.encode(), "sha256").hex()

    return hashed
