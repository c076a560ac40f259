"""Envelope encryption of transcript content (R-RET-2, docs/privacy.md "Transcript retention").

Each tenant has a data key (``TenantDataKey``): 32 random bytes, stored only wrapped.

- With ``AUDIT_TRANSCRIPT_KMS_KEY_ID`` set (production): KMS ``GenerateDataKey`` (AES_256) under that platform key in
  ``AWS_REGION``, with the encryption context ``{"tenant": "<tenant id>"}``; unwrapped with ``Decrypt`` under the
  same context, so a wrapped key presented for another tenant is refused by KMS (and CloudTrail logs every use).
- Otherwise (the embedded default): a local key-wrapping key plays KMS. It comes from ``AUDIT_TRANSCRIPT_LOCAL_KEK``
  (32 bytes, base64) or from ``AUDIT_TRANSCRIPT_LOCAL_KEK_FILE``, created on first use with mode 0600; never the
  ``SECRET_KEY``. The data key is wrapped with AES-256-GCM, the encryption context as associated data.

Content is AES-256-GCM under the data key with ``<tenant id>|<row id>`` as associated data. Plaintext data keys are
cached in this process for ``AUDIT_TRANSCRIPT_KEY_CACHE_S`` (a few minutes: one KMS call per tenant per period,
not per row) and never logged or stored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from audit.models import TenantDataKey

_NONCE = 12


class DecryptionError(Exception):
    """The content or the key doesn't decrypt under this tenant's context (tampered, moved, or shredded)."""


class KeyServiceUnavailable(Exception):
    """KMS could not be asked (network, throttling, permissions): try again later; nothing was decided."""


def _context(tenant_id: str) -> dict[str, str]:
    return {"tenant": str(tenant_id)}


def _context_bytes(tenant_id: str) -> bytes:
    return orjson.dumps(_context(tenant_id), option=orjson.OPT_SORT_KEYS)


# --- the key-wrapping providers ------------------------------------------------------------------------
def _kms():
    import boto3

    return boto3.client("kms", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL)


def _local_kek() -> bytes:
    configured = settings.AUDIT_TRANSCRIPT_LOCAL_KEK
    if configured:
        key = base64.b64decode(configured)
        if len(key) != 32:
            raise ValueError("TRANSCRIPT_LOCAL_KEK must be 32 bytes, base64-encoded")
        return key
    path = Path(settings.AUDIT_TRANSCRIPT_LOCAL_KEK_FILE)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: two processes starting together can't both write one; the loser reads the winner's.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
        else:
            key = os.urandom(32)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes")
    return key


def _local_ref(kek: bytes) -> str:
    return "local:" + hashlib.sha256(b"wattle-kek-id" + kek).hexdigest()[:16]


def generate(tenant_id: str) -> tuple[bytes, bytes, str, str]:
    """A new data key for ``tenant_id``: (plaintext, wrapped, provider, wrapping key reference)."""
    cmk = settings.AUDIT_TRANSCRIPT_KMS_KEY_ID
    if cmk:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = _kms().generate_data_key(KeyId=cmk, KeySpec="AES_256", EncryptionContext=_context(tenant_id))
        except (BotoCoreError, ClientError) as exc:
            raise KeyServiceUnavailable(exc.__class__.__name__) from None
        return answer["Plaintext"], answer["CiphertextBlob"], TenantDataKey.Provider.KMS, answer["KeyId"]
    kek = _local_kek()
    plaintext = os.urandom(32)
    nonce = os.urandom(_NONCE)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, plaintext, _context_bytes(tenant_id))
    return plaintext, wrapped, TenantDataKey.Provider.LOCAL, _local_ref(kek)


def unwrap(tenant_id: str, provider: str, wrapped: bytes, wrapping_key: str = "") -> bytes:
    """The plaintext data key, decrypted under ``tenant_id``'s context; DecryptionError if it isn't that
    tenant's."""
    wrapped = bytes(wrapped)
    if provider == TenantDataKey.Provider.KMS:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = _kms().decrypt(CiphertextBlob=wrapped, EncryptionContext=_context(tenant_id),
                                    **({"KeyId": wrapping_key} if wrapping_key else {}))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise DecryptionError("the data key is not this tenant's") from None
            raise KeyServiceUnavailable(exc.__class__.__name__) from None
        except BotoCoreError as exc:
            raise KeyServiceUnavailable(exc.__class__.__name__) from None
        return answer["Plaintext"]
    try:
        return AESGCM(_local_kek()).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _context_bytes(tenant_id))
    except InvalidTag:
        raise DecryptionError("the data key is not this tenant's") from None


# --- the plaintext key cache -----------------------------------------------------------------------------
_cache: dict[str, tuple[bytes, float]] = {}  # data key id -> (plaintext, monotonic expiry)
_lock = threading.Lock()
_CACHE_MAX = 10_000


def _cached(key_id: str) -> bytes | None:
    with _lock:
        entry = _cache.get(key_id)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del _cache[key_id]
            return None
        return entry[0]


def _remember(key_id: str, plaintext: bytes) -> None:
    with _lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key_id] = (plaintext, time.monotonic() + settings.AUDIT_TRANSCRIPT_KEY_CACHE_S)


def forget(key_id: str | None = None) -> None:
    """Drop a key (shredded) or every key from this process's cache."""
    with _lock:
        if key_id is None:
            _cache.clear()
        else:
            _cache.pop(str(key_id), None)


def data_key_create(tenant_id: str) -> TenantDataKey:
    """A new data key row for ``tenant_id`` (its plaintext goes to the cache only)."""
    plaintext, wrapped, provider, reference = generate(str(tenant_id))
    row = TenantDataKey.objects.create(tenant_id=tenant_id, provider=provider, wrapping_key=reference,
                                       wrapped=wrapped)
    _remember(str(row.pk), plaintext)
    return row


def active_data_key(tenant_id: str, *, create: bool = True) -> TenantDataKey | None:
    """The tenant's current data key (the newest not scheduled for shredding), created if it has none and
    ``create``. None when it has none (or only keys being shredded: an off-boarded tenant gets no new one)."""
    keys = list(TenantDataKey.objects.filter(tenant_id=tenant_id).order_by("-created_at")[:1])
    if keys:
        return keys[0] if keys[0].destroy_after is None else None
    return data_key_create(tenant_id) if create else None


def plaintext_key(row: TenantDataKey) -> bytes:
    key = _cached(str(row.pk))
    if key is None:
        key = unwrap(str(row.tenant_id), row.provider, row.wrapped, row.wrapping_key)
        _remember(str(row.pk), key)
    return key


# --- content ---------------------------------------------------------------------------------------------
def _aad(tenant_id: str, row_id: str) -> bytes:
    return f"{tenant_id}|{row_id}".encode()


def seal(key: bytes, tenant_id: str, row_id: str, content: dict) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, orjson.dumps(content), _aad(str(tenant_id), str(row_id)))


def open_sealed(key: bytes, tenant_id: str, row_id: str, sealed: bytes) -> dict:
    sealed = bytes(sealed)
    try:
        plain = AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _aad(str(tenant_id), str(row_id)))
    except InvalidTag:
        raise DecryptionError("the content doesn't decrypt under this tenant and row") from None
    return orjson.loads(plain)
