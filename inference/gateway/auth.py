"""API-key authentication for the data plane, from the records the control plane publishes in Redis
(``core.contract``): the key's record and its tenant's, read in one round trip.

Records are cached in-process for ``INFERENCE_KEY_CACHE_TTL_S`` (default 0.5 s), so a revocation or a
suspension reaches every worker within a second while a busy key costs at most two Redis reads a second.
During a rotation's grace period the record also carries the previous secret's hash and when it stops working,
so both secrets are checked from the one record (no extra round trip).

When Redis has lost the records (no snapshot marker of this contract version), the data plane doesn't rebuild
them itself (it has no database): it raises the rebuild job for a control-plane worker (``core.jobs``) and
holds the request up to ``INFERENCE_SNAPSHOT_WAIT_S`` for the marker to come back, then answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass, field

from django.conf import settings
from redis.exceptions import RedisError

from core import contract, jobs, keys
from inference.gateway import errors
from inference.lru import LRU

logger = logging.getLogger("wattle.auth")
_SNAPSHOT_POLL_S = 0.05
_REBUILD_ASK_EVERY_S = 5.0


class SnapshotMissing(Exception):
    """Redis holds no complete snapshot of this contract version: the records are being rebuilt."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the gateway knows of a caller: its key's record joined with its tenant's."""

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
    # Effective limits by kind (``core.quotas``); empty: nothing to enforce at that scope.
    tenant_limits: dict = field(default_factory=dict)
    key_limits: dict = field(default_factory=dict)
    # Epoch seconds from which the tenant is refused for want of payment; infinity when it has nothing to pay,
    # so the check per request is one float comparison.
    unpaid_after: float = math.inf
    redaction: str = "off"  # the tenant's mode (``core.redaction``)
    price_list: str | None = None  # the tenant's prices for the spend cap (``BackendPool.cost_micro_aud``)
    retention_days: int = 0  # the tenant's transcript retention (``inference.gateway.transcripts``); 0: none
    # The tenant's whole record, for what only some surfaces read (the conversation API's escalation rule and
    # sentiment scorer). Not compared: two callers differ by their key, not by this.
    tenant_record: contract.TenantRecord | None = field(default=None, compare=False, repr=False)

    @classmethod
    def join(cls, key: contract.KeyRecord, tenant: contract.TenantRecord) -> KeyRecord:
        return cls(
            key_id=key.key_id, tenant=key.tenant, tenant_status=tenant.status, hash=key.hash,
            scopes=frozenset(key.scopes), models=frozenset(key.models), expires=key.expires, revoked=key.revoked,
            prev_hash=key.prev_hash, prev_expires=key.prev_expires, tenant_limits=tenant.limits,
            key_limits=key.limits,
            unpaid_after=math.inf if tenant.unpaid_after is None else tenant.unpaid_after,
            redaction=tenant.redaction,
            price_list=tenant.price_list,
            retention_days=tenant.retention_days,
            tenant_record=tenant,
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
        self._tenants: LRU[str, list] = LRU(10_000)  # tenant id -> [TenantRecord, fetched_at] (``tenant_caller``)
        self._inflight: dict[str, asyncio.Future] = {}
        self._hash_secret = keys.secret_hasher(settings.API_KEY_PEPPER)
        self._snapshot_wait_s = settings.INFERENCE_SNAPSHOT_WAIT_S
        self._rebuild_asked_at = -_REBUILD_ASK_EVERY_S
        self._snapshot_wait: asyncio.Task | None = None  # the one wait for a rebuild, shared by held requests
        self._tenant_asked_at: LRU[str, float] = LRU(1000)  # tenant id -> when its record was last asked for
        self._jobs: set[asyncio.Task] = set()
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
        """The key's record joined with its tenant's: one MGET when the tenant is known from an earlier fetch
        (keys never change tenant), two GETs for a key this worker hasn't seen."""
        cached = self._cache.get(key_id)
        known = cached is not None and cached[0] is not None
        tenant_id = cached[0].tenant if known else None
        key_name = contract.api_key_record_key(key_id)
        if tenant_id is not None:
            raw_key, raw_tenant = await self._redis.mget(key_name, contract.tenant_record_key(tenant_id))
        else:
            raw_key, raw_tenant = await self._redis.get(key_name), None
        # A key seen lately needn't be held while Redis is repopulated: it is served from its last record.
        hold = not (known and time.monotonic() - cached[1] < self._stale_ok)
        if raw_key is None:
            await self._check_snapshot(hold=hold)
            return None
        try:
            key = contract.KeyRecord.decode(raw_key)
            if raw_tenant is None or key.tenant != tenant_id:
                raw_tenant = await self._redis.get(contract.tenant_record_key(key.tenant))
            if raw_tenant is None:
                await self._check_snapshot(hold=hold)
                # The snapshot is marked whole, yet this key's tenant isn't in it (its publish failed, or the
                # record was lost alone): have that tenant published, and answer 503 until it is.
                self._republish_tenant(key.tenant)
                raise SnapshotMissing
            return KeyRecord.join(key, contract.TenantRecord.decode(raw_tenant))
        except contract.RecordError:
            logger.error("auth: key %s has a record this version can't read", key_id)
            await self._check_snapshot(hold=hold)
            raise SnapshotMissing from None

    def _republish_tenant(self, tenant_id: str) -> None:
        now = time.monotonic()
        if now - self._tenant_asked_at.get(tenant_id, -_REBUILD_ASK_EVERY_S) <= _REBUILD_ASK_EVERY_S:
            return
        self._tenant_asked_at.put(tenant_id, now)
        logger.error("auth: tenant %s has keys but no published record; asking the control plane for it",
                     tenant_id[:64])
        self._raise(jobs.PUBLISH_TENANT, tenant_id)

    def _raise(self, task: str, *args) -> None:
        """Queue a control-plane job without holding the request (the broker call runs in a thread)."""
        async def send() -> None:
            try:
                await asyncio.to_thread(jobs.raise_job, task, *args, broker_url=settings.CELERY_BROKER_URL,
                                        eager=settings.CELERY_TASK_ALWAYS_EAGER)
            except Exception:
                logger.warning("auth: could not raise %s", task, exc_info=True)

        job = asyncio.get_running_loop().create_task(send())
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _check_snapshot(self, *, hold: bool = True) -> None:
        """Return if the snapshot is complete (the key really doesn't exist). Otherwise have a control-plane
        worker rebuild it and raise SnapshotMissing: at once for a key that can be served from its last record
        (``hold`` False), else after waiting up to ``INFERENCE_SNAPSHOT_WAIT_S`` for the rebuild. One wait per
        worker serves every request held meanwhile, whatever its key."""
        ready = contract.snapshot_ready_key()
        if await self._redis.exists(ready):
            return
        now = time.monotonic()
        if now - self._rebuild_asked_at > _REBUILD_ASK_EVERY_S:
            self._rebuild_asked_at = now
            logger.warning("auth: no complete key snapshot in Redis; asking the control plane to rebuild it")
            self._raise(jobs.REBUILD_SNAPSHOT)
        if not hold:
            raise SnapshotMissing
        if self._snapshot_wait is None or self._snapshot_wait.done():
            self._snapshot_wait = asyncio.get_running_loop().create_task(self._wait_for_snapshot(ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._snapshot_wait), self._snapshot_wait_s)
        raise SnapshotMissing  # rebuilt, or not yet: the caller looks again, or answers 503

    async def _wait_for_snapshot(self, ready: str) -> None:
        deadline = time.monotonic() + self._snapshot_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(_SNAPSHOT_POLL_S)  # a rebuild takes a worker a moment: look again shortly
            with contextlib.suppress(RedisError, OSError):
                if await self._redis.exists(ready):
                    return

    async def _fetch_after_rebuild(self, key_id: str, cached, now: float) -> list:
        """The snapshot was missing: fetch again if it is back; else a key seen recently keeps working for a
        bounded time (as with Redis away), and any other gets a 503 to retry."""
        if await self._redis.exists(contract.snapshot_ready_key()):
            try:
                return await self._fetch_once(key_id)
            except SnapshotMissing:
                pass
        if cached is not _MISSING and cached[0] is not None and now - cached[1] < self._stale_ok:
            return cached
        raise errors.GatewayError(
            503, "Authentication is being restored after a restart. Please retry shortly.",
            type="server_error", code="service_unavailable", headers={"retry-after": "1"},
        )

    async def authenticate(self, authorization: bytes | None) -> KeyRecord:
        """Return the key's record, or raise the OpenAI-shaped 401/402/403 the client should see (402: the
        organisation is suspended, or its subscription is unpaid past its grace period)."""
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
                try:
                    entry = await self._fetch_once(key_id)
                except SnapshotMissing:
                    entry = await self._fetch_after_rebuild(key_id, cached, now)
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
        check_standing(record)
        if "inference" not in record.scopes:
            raise errors.GatewayError(
                403,
                "This API key does not have the `inference` scope.",
                type="permission_error",
                code="insufficient_scope",
            )
        return record

    # --- callers without an API key ------------------------------------------------------------------
    async def tenant_caller(self, tenant_id: str, *, key_id: str) -> KeyRecord:
        """The caller a console surface (the playground) dispatches as: the tenant's published record joined with
        a key of the surface's own (``key_id``, which its usage events carry) that has the `inference` scope,
        every model and no limits of its own. So the tenant's limits, suspension and payment state apply to it
        exactly as to the tenant's API keys. Raises the same 402 the API would, or 503 while the record can't be
        read. Tenant records are cached as key records are (``INFERENCE_KEY_CACHE_TTL_S``)."""
        now = time.monotonic()
        entry = self._tenants.get(tenant_id)
        if entry is None or now - entry[1] >= self._ttl:
            stale_ok = entry is not None and now - entry[1] < self._stale_ok
            try:
                entry = [await self._fetch_tenant(tenant_id), now]
                self._tenants.put(tenant_id, entry)
            except (RedisError, OSError, SnapshotMissing) as exc:
                if not stale_ok:
                    raise errors.GatewayError(
                        503, "Your organisation's settings can't be read just now. Please retry shortly.",
                        type="server_error", code="service_unavailable", headers={"retry-after": "2"},
                    ) from exc
        key = contract.KeyRecord(key_id=key_id, tenant=tenant_id, hash="", scopes=("inference",))
        record = KeyRecord.join(key, entry[0])
        check_standing(record)
        return record

    async def _fetch_tenant(self, tenant_id: str) -> contract.TenantRecord:
        name = contract.tenant_record_key(tenant_id)
        raw = await self._redis.get(name)
        if raw is None:
            try:
                await self._check_snapshot()  # returns if the snapshot is whole: this one tenant is missing
            except SnapshotMissing:
                raw = await self._redis.get(name)  # rebuilt meanwhile, perhaps
            if raw is None:
                self._republish_tenant(tenant_id)
                raise SnapshotMissing
        try:
            return contract.TenantRecord.decode(raw)
        except contract.RecordError:
            logger.error("auth: tenant %s has a record this version can't read", tenant_id[:64])
            raise SnapshotMissing from None

    def invalidate(self) -> None:
        self._cache.clear()
        self._tenants.clear()


def check_standing(record: KeyRecord) -> None:
    """Raise the 402 a caller of a suspended organisation, or of one unpaid past its grace period, gets: on the
    API and in the playground alike."""
    if record.tenant_status != "active":
        raise errors.GatewayError(
            402,
            "Your organisation's access is suspended. Sign in to the Wattle console to see why and how to "
            "restore it.",
            type="insufficient_quota",
            code="account_suspended",
        )
    # Compared per request (not when the record was published), so a grace period ends on time on every
    # worker without anything republished.
    if record.unpaid_after <= time.time():
        raise errors.GatewayError(
            402,
            "Your organisation's subscription is unpaid. An owner or billing member can pay the open invoice "
            "or update the payment method on the Billing page of the Wattle console; the API works again "
            "within a second of payment.",
            type="insufficient_quota",
            code="payment_required",
        )
