"""API-key authentication for the data plane, from the Redis snapshot the control plane publishes.

Records are cached in-process for ``INFERENCE_KEY_CACHE_TTL_S`` (default 0.5 s), so a revocation or a
suspension reaches every worker within a second while a busy key costs at most two Redis reads a second.
During a rotation's grace period the record also carries the previous secret's hash and when it stops working,
so both secrets are checked from the one record (no extra round trip).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from core.redis import key as redis_key
from inference.gateway import errors
from inference.lru import LRU
from tenants import keys
from tenants.snapshot import SNAPSHOT_READY, api_key_record_key


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    tenant_status: str
    hash: str
    scopes: frozenset[str]
    models: frozenset[str]
    expires: float | None
    revoked: bool
    prev_hash: str | None = None
    prev_expires: float | None = None
    # Effective limits by kind (see billing.limits); empty: nothing to enforce at that scope.
    tenant_limits: dict = field(default_factory=dict)
    key_limits: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRecord:
        data = orjson.loads(raw)
        return cls(
            key_id=data["key_id"],
            tenant=data["tenant"],
            tenant_status=data["tenant_status"],
            hash=data["hash"],
            scopes=frozenset(data.get("scopes") or ()),
            models=frozenset(data.get("models") or ()),
            expires=data.get("expires"),
            revoked=bool(data.get("revoked")),
            prev_hash=data.get("prev_hash") or None,
            prev_expires=data.get("prev_expires"),
            tenant_limits=(data.get("limits") or {}).get("tenant") or {},
            key_limits=(data.get("limits") or {}).get("key") or {},
        )

    def secret_matches(self, digest: str) -> bool:
        """Constant-time check of the presented secret's digest against the current secret and, until it
        expires, the one it replaced."""
        if hmac.compare_digest(digest, self.hash):
            return True
        return (
            self.prev_hash is not None
            and self.prev_expires is not None
            and self.prev_expires > time.time()
            and hmac.compare_digest(digest, self.prev_hash)
        )

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


_MISSING = object()


class KeyAuthenticator:
    def __init__(self, redis) -> None:
        self._redis = redis
        self._ttl = settings.INFERENCE_KEY_CACHE_TTL_S
        self._stale_ok = settings.INFERENCE_KEY_STALE_OK_S
        # key_id -> [KeyRecord | None, fetched_at, verified]. None caches "no such key" just as briefly. Bounded,
        # evicting the coldest key: a flood of made-up key ids can't flush the busy keys out all at once.
        # ``verified`` is the fingerprint of the secret last found to match this record's current hash.
        self._cache: LRU[str, list] = LRU(settings.INFERENCE_KEY_CACHE_SIZE)
        self._rebuild_lock = asyncio.Lock()
        self._inflight: dict[str, asyncio.Future] = {}
        self._hash_secret = keys.secret_hasher()
        # A fingerprint is a keyed 256-bit BLAKE2s of the secret under a key drawn per process and never stored:
        # as hard to reverse or forge as the peppered HMAC-SHA256, a quarter of its cost (0.8 against 3.2 µs). The
        # cache thus holds no secret, and a busy key's secret is HMAC'd once per record fetch, not per request.
        self._fingerprint_key = secrets.token_bytes(32)

    async def _fetch_once(self, key_id: str) -> list:
        """Fetch a record for every request waiting on it at once: when a busy key's cache entry expires,
        one GET refreshes it rather than one per concurrent request. Returns the new cache entry."""
        pending = self._inflight.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key_id] = future
        try:
            record = await self._fetch(key_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        finally:
            self._inflight.pop(key_id, None)
        entry = [record, time.monotonic(), None]
        self._cache.put(key_id, entry)
        future.set_result(entry)
        return entry

    async def _fetch(self, key_id: str) -> KeyRecord | None:
        raw = await self._redis.get(api_key_record_key(key_id))
        if raw is None:
            if not await self._redis.exists(redis_key(SNAPSHOT_READY)):
                # Redis lost its data (restart without persistence): republish from the database once.
                await self._rebuild_snapshot()
                raw = await self._redis.get(api_key_record_key(key_id))
            if raw is None:
                return None
        return KeyRecord.from_json(raw)

    async def _rebuild_snapshot(self) -> None:
        async with self._rebuild_lock:
            if await self._redis.exists(redis_key(SNAPSHOT_READY)):
                return
            from tenants import snapshot

            await sync_to_async(snapshot.rebuild_from_worker_thread, thread_sensitive=False)()

    async def authenticate(self, authorization: bytes | None) -> KeyRecord:
        """Return the key's record, or raise the OpenAI-shaped 401/402/403 the client should see."""
        if not authorization:
            raise errors.missing_key()
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.missing_key()
        parsed = keys.parse_key(token)
        if parsed is None:
            raise errors.invalid_key(token)
        key_id, secret = parsed

        now = time.monotonic()
        cached = self._cache.get(key_id, _MISSING)
        if cached is not _MISSING and now - cached[1] < self._ttl:
            entry = cached
        else:
            try:
                entry = await self._fetch_once(key_id)
            except (RedisError, OSError) as exc:
                # Redis unreachable: a key this worker saw recently keeps working for a bounded time, so a
                # Redis restart does not take the API down; an unknown key can't be checked at all.
                if cached is not _MISSING and cached[0] is not None and now - cached[1] < self._stale_ok:
                    entry = cached
                else:
                    raise errors.GatewayError(
                        503, "Authentication is temporarily unavailable. Please retry shortly.",
                        type="server_error", code="service_unavailable", headers={"retry-after": "2"},
                    ) from exc

        record = entry[0]
        if record is None:
            raise errors.invalid_key(token)
        fingerprint = hashlib.blake2s(secret.encode(), key=self._fingerprint_key).digest()
        if entry[2] is None or not hmac.compare_digest(entry[2], fingerprint):
            digest = self._hash_secret(secret)
            if not record.secret_matches(digest):
                raise errors.invalid_key(token)
            if hmac.compare_digest(digest, record.hash):
                # Only the current secret is remembered: the previous one's grace period is checked each time.
                entry[2] = fingerprint
        if record.revoked:
            raise errors.GatewayError(401, "This API key has been revoked.", code="invalid_api_key")
        if record.expires is not None and record.expires <= time.time():
            raise errors.GatewayError(401, "This API key has expired.", code="invalid_api_key")
        if record.tenant_status != "active":
            raise errors.GatewayError(
                402,
                "Your organisation's access is suspended. Sign in to the Wattle console to see why and how to "
                "restore it.",
                type="insufficient_quota",
                code="account_suspended",
            )
        if "inference" not in record.scopes:
            raise errors.GatewayError(
                403,
                "This API key does not have the `inference` scope.",
                type="permission_error",
                code="insufficient_scope",
            )
        return record

    def invalidate(self) -> None:
        self._cache.clear()
