"""Admission control: every limit of a tenant and of its key checked and reserved in one atomic Redis script.

Per request, one round trip: the script drops expired concurrency slots, checks requests per minute, tokens
per minute, concurrent requests, tokens per day, tokens per month and spend per month for the tenant and (when
the key has limits of its own) the key, and only if all pass, counts the request and reserves
``estimated prompt tokens + max_tokens`` and the spend they would cost. When the request ends, settlement
replaces the reservation with the true counts from upstream usage and frees the slot (batched, off the
request path). Slots carry an expiry that the worker renews while the request runs, so the slots of a worker
that died come back on their own within ``INFERENCE_LIMITS_SLOT_TTL_S``.

Windows: requests and tokens per calendar minute, tokens per day and everything monthly per Australia/Sydney
day and month. With Redis unreachable, ``INFERENCE_LIMITS_ON_REDIS_ERROR`` chooses: ``closed`` answers 503;
``open`` admits against per-worker local counters at ``INFERENCE_LIMITS_LOCAL_FRACTION`` of each limit, for
at most ``INFERENCE_LIMITS_FAIL_OPEN_MAX_S``, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from redis.exceptions import RedisError

from inference.gateway.errors import GatewayError
from portal.redis import key as redis_key

logger = logging.getLogger("wattle.limits")

KINDS = ("rpm", "tpm", "concurrent", "day_tokens", "month_tokens", "month_spend")
_SYDNEY = ZoneInfo("Australia/Sydney")
_NONE = -1

_ADMIT = """
local now = tonumber(ARGV[1])
local slot = ARGV[2]
local slot_expiry = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local spend = tonumber(ARGV[5])
local scopes = tonumber(ARGV[6])
local ttl = {tonumber(ARGV[7]), tonumber(ARGV[7]), 0, tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[9])}
local cost = {1, tokens, 1, tokens, tokens, spend}
local used = {}
for s = 0, scopes - 1 do
  for k = 1, 6 do
    local i = s * 6 + k
    local limit = tonumber(ARGV[9 + i])
    local current
    if k == 3 then
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
      current = redis.call('ZCARD', KEYS[i])
    else
      current = tonumber(redis.call('GET', KEYS[i]) or '0')
    end
    used[i] = current
    if limit >= 0 and current + cost[k] > limit then
      return {0, s, k, current}
    end
  end
end
for s = 0, scopes - 1 do
  for k = 1, 6 do
    local i = s * 6 + k
    if k == 3 then
      redis.call('ZADD', KEYS[i], slot_expiry, slot)
      redis.call('PEXPIRE', KEYS[i], slot_expiry - now + 1000)
    elseif cost[k] ~= 0 then
      redis.call('INCRBY', KEYS[i], cost[k])
      redis.call('PEXPIRE', KEYS[i], ttl[k])
    end
  end
end
return {1, used[1], used[2], used[7] or 0, used[8] or 0}
"""

_SETTLE = """
local slot = ARGV[1]
local token_delta = tonumber(ARGV[2])
local spend_delta = tonumber(ARGV[3])
local scopes = tonumber(ARGV[4])
for s = 0, scopes - 1 do
  local base = s * 6
  redis.call('ZREM', KEYS[base + 3], slot)
  if token_delta ~= 0 then
    for _, k in ipairs({2, 4, 5}) do
      if redis.call('EXISTS', KEYS[base + k]) == 1 then redis.call('INCRBY', KEYS[base + k], token_delta) end
    end
  end
  if spend_delta ~= 0 and redis.call('EXISTS', KEYS[base + 6]) == 1 then
    redis.call('INCRBY', KEYS[base + 6], spend_delta)
  end
end
return 1
"""


@dataclass(slots=True)
class Windows:
    minute: int
    day: str
    month: str
    minute_reset_s: float
    day_reset_s: float
    month_reset_s: float


class _Calendar:
    """Window ids for "now", recomputing the Sydney day and month only when one ends."""

    def __init__(self) -> None:
        self._day_end = 0.0
        self._day = self._month = ""
        self._month_end = 0.0

    def now(self, now: float) -> Windows:
        if now >= self._day_end:
            local = datetime.fromtimestamp(now, _SYDNEY)
            midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), _SYDNEY)
            first = (local.replace(day=1) + timedelta(days=32)).replace(day=1)
            next_month = datetime.combine(first.date(), datetime.min.time(), _SYDNEY)
            self._day, self._month = local.strftime("%Y%m%d"), local.strftime("%Y%m")
            self._day_end, self._month_end = midnight.timestamp(), next_month.timestamp()
        minute = int(now // 60)
        return Windows(
            minute, self._day, self._month, (minute + 1) * 60 - now, self._day_end - now, self._month_end - now
        )


def tenant_counter_keys(tenant_id: str, now: float) -> dict[str, str]:
    """The Redis counters of a tenant's budgets for the windows containing ``now`` (read by the control plane
    for alerts and consoles; the same names the admission script writes)."""
    windows = _Calendar().now(now)
    base = f"{redis_key('rl')}:t:{tenant_id}"
    return {
        "rpm": f"{base}:rpm:{windows.minute}",
        "tpm": f"{base}:tpm:{windows.minute}",
        "concurrent": f"{base}:conc",
        "day_tokens": f"{base}:day:{windows.day}",
        "month_tokens": f"{base}:mtok:{windows.month}",
        "month_spend": f"{base}:mspend:{windows.month}",
        "day": windows.day,
        "month": windows.month,
    }


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "1h2m3s"."""
    seconds = max(0, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _when(now: float, seconds: float) -> str:
    moment = datetime.fromtimestamp(now + seconds, _SYDNEY)
    return moment.strftime("%-d %b %Y %H:%M %Z")


@dataclass(slots=True)
class Admission:
    keys: list[str]
    scopes: int
    slot: str
    tokens: int
    spend: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    local: bool = False  # admitted against per-worker counters while Redis was away


_REFUSALS = {
    1: ("requests per minute", "rate_limit_exceeded", "requests"),
    2: ("tokens per minute", "rate_limit_exceeded", "tokens"),
    3: ("concurrent requests", "rate_limit_exceeded", "requests"),
    4: ("daily token budget", "insufficient_quota", "tokens"),
    5: ("monthly token budget", "insufficient_quota", "tokens"),
    6: ("monthly spend cap", "insufficient_quota", "spend"),
}


class Limiter:
    def __init__(self, redis, *, clock=time.time) -> None:
        self._clock = clock  # wall-clock seconds; windows follow it
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)
        self._calendar = _Calendar()
        self._prefix = redis_key("rl")
        self._pending: list[tuple[list[str], list]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing_since: float | None = None
        self._local: dict[str, int] = {}
        self._local_slots: dict[str, set[str]] = {}
        self._active: dict[str, Admission] = {}  # slot -> admission, for renewing long requests' slots
        self._renew_task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._settle_loop())
        self._renew_task = asyncio.create_task(self._renew_loop())

    async def stop(self) -> None:
        for task in (self._task, self._renew_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self._flush_settlements()

    # --- admission ---------------------------------------------------------------------------------
    def _keys(self, scope: str, windows: Windows) -> list[str]:
        base = f"{self._prefix}:{scope}"
        return [
            f"{base}:rpm:{windows.minute}", f"{base}:tpm:{windows.minute}", f"{base}:conc",
            f"{base}:day:{windows.day}", f"{base}:mtok:{windows.month}", f"{base}:mspend:{windows.month}",
        ]

    async def admit(self, record, *, tokens: int, spend: int, slot: str | None = None) -> Admission | None:
        """Reserve ``tokens`` and ``spend`` (micro-AUD) for a request, or raise the 429 the client should see.

        Returns None when neither the tenant nor the key has any limit (nothing to count)."""
        tenant_limits, key_limits = record.tenant_limits, record.key_limits
        if not tenant_limits and not key_limits:
            return None
        now = self._clock()
        windows = self._calendar.now(now)
        scopes = [tenant_limits] + ([key_limits] if key_limits else [])
        keys = self._keys(f"t:{record.tenant}", windows)
        if key_limits:
            keys += self._keys(f"k:{record.key_id}", windows)
        slot = slot or secrets.token_hex(8)
        limits = [scope.get(kind, _NONE) for scope in scopes for kind in KINDS]
        now_ms = int(now * 1000)
        args = [
            now_ms, slot, now_ms + int(settings.INFERENCE_LIMITS_SLOT_TTL_S * 1000), tokens, spend, len(scopes),
            120_000, 2 * 86_400_000, 40 * 86_400_000, *limits,
        ]
        try:
            result = await self._admit(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            return self._admit_without_redis(record, scopes, tokens, spend, windows, slot, exc)
        self._failing_since = None
        if result[0] == 0:
            raise self._refusal(scopes[int(result[1])], int(result[2]), windows)
        admission = Admission(keys=keys, scopes=len(scopes), slot=slot, tokens=tokens, spend=spend)
        self._active[slot] = admission
        admission.headers = self._headers(scopes, windows, rpm_used=[int(result[1]), int(result[3])],
                                          tpm_used=[int(result[2]), int(result[4])], tokens=tokens)
        return admission

    @staticmethod
    def _tightest(scopes: list[dict], kind: str, used: list[int]) -> tuple[int, int] | None:
        best = None
        for index, scope in enumerate(scopes):
            limit = scope.get(kind)
            if limit is None:
                continue
            remaining = limit - used[index]
            if best is None or remaining < best[1]:
                best = (limit, remaining)
        return best

    def _headers(self, scopes, windows: Windows, *, rpm_used, tpm_used, tokens: int) -> list[tuple[bytes, bytes]]:
        headers = []
        requests = self._tightest(scopes, "rpm", rpm_used)
        if requests:
            headers += [
                (b"x-ratelimit-limit-requests", str(requests[0]).encode()),
                (b"x-ratelimit-remaining-requests", str(max(0, requests[1] - 1)).encode()),
                (b"x-ratelimit-reset-requests", _duration(windows.minute_reset_s).encode()),
            ]
        token_limit = self._tightest(scopes, "tpm", tpm_used)
        if token_limit:
            headers += [
                (b"x-ratelimit-limit-tokens", str(token_limit[0]).encode()),
                (b"x-ratelimit-remaining-tokens", str(max(0, token_limit[1] - tokens)).encode()),
                (b"x-ratelimit-reset-tokens", _duration(windows.minute_reset_s).encode()),
            ]
        return headers

    def _refusal(self, scope: dict, kind: int, windows: Windows) -> GatewayError:
        label, code, _unit = _REFUSALS[kind]
        limit = scope.get(KINDS[kind - 1])
        if kind in (1, 2):
            retry = windows.minute_reset_s
        elif kind == 3:
            retry = 1
        elif kind == 4:
            retry = windows.day_reset_s
        else:
            retry = windows.month_reset_s
        retry_after = str(max(1, math.ceil(retry)))
        reset = {"x-ratelimit-reset-requests" if kind in (1, 3) else "x-ratelimit-reset-tokens": _duration(retry)}
        if code == "rate_limit_exceeded":
            shown = f"{limit:,}" if kind != 6 else f"A${limit / 1_000_000:,.2f}"
            message = (
                f"Rate limit reached for {label}: limit {shown}. Please try again in {_duration(retry)}."
            )
            return GatewayError(429, message, type="requests" if kind in (1, 3) else "tokens", code=code,
                                headers={"retry-after": retry_after, **reset})
        amount = f"A${limit / 1_000_000:,.2f}" if kind == 6 else f"{limit:,} tokens"
        message = (
            f"You have used your {label} ({amount}). It resets at {_when(self._clock(), retry)}. Your "
            "organisation's owner or Wattle support can raise it in the console."
        )
        return GatewayError(429, message, type="insufficient_quota", code=code,
                            headers={"retry-after": retry_after, **reset})

    # --- Redis outage ------------------------------------------------------------------------------
    def _admit_without_redis(self, record, scopes, tokens, spend, windows, slot, exc) -> Admission:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            logger.warning("limits: Redis unavailable (%s); policy %s", exc.__class__.__name__,
                           settings.INFERENCE_LIMITS_ON_REDIS_ERROR)
        if (
            settings.INFERENCE_LIMITS_ON_REDIS_ERROR != "open"
            or now - self._failing_since > settings.INFERENCE_LIMITS_FAIL_OPEN_MAX_S
        ):
            raise GatewayError(
                503, "Rate limiting is temporarily unavailable. Please retry shortly.", type="server_error",
                code="service_unavailable", headers={"retry-after": "2"},
            ) from exc
        fraction = settings.INFERENCE_LIMITS_LOCAL_FRACTION
        names = [f"t:{record.tenant}"] + ([f"k:{record.key_id}"] if len(scopes) > 1 else [])
        window_ids = (windows.minute, windows.minute, None, windows.day, windows.month, windows.month)
        costs = (1, tokens, 1, tokens, tokens, spend)
        local_keys = []
        for name, scope in zip(names, scopes, strict=True):
            for index, kind in enumerate(KINDS):
                limit = scope.get(kind)
                counter = f"{name}:{kind}:{window_ids[index]}"
                local_keys.append(counter)
                if limit is None:
                    continue
                used = len(self._local_slots.get(name, ())) if kind == "concurrent" else self._local.get(counter, 0)
                if used + costs[index] > max(1, int(limit * fraction)):
                    raise self._refusal(scope, index + 1, windows)
        for name in names:
            self._local_slots.setdefault(name, set()).add(slot)
        for counter, cost in zip(local_keys, costs * len(names), strict=True):
            self._local[counter] = self._local.get(counter, 0) + cost
        if len(self._local) > 50_000:
            self._local.clear()
        return Admission(keys=names, scopes=len(scopes), slot=slot, tokens=tokens, spend=spend, local=True)

    # --- settlement --------------------------------------------------------------------------------
    def settle(self, admission: Admission, *, tokens: int, spend: int) -> None:
        """Replace the reservation with the true counts and free the slot (batched, never blocks)."""
        if admission.local:
            for name in admission.keys:
                self._local_slots.get(name, set()).discard(admission.slot)
            return
        self._active.pop(admission.slot, None)
        self._pending.append(
            (admission.keys, [admission.slot, tokens - admission.tokens, spend - admission.spend, admission.scopes])
        )
        self._wake.set()

    async def _flush_settlements(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:500], self._pending[500:]
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in batch:
                await self._settle(keys=keys, args=args, client=pipe)
            try:
                await pipe.execute()
            except (RedisError, OSError):
                # Slots expire by themselves; token counts stay conservative (the reservation is kept).
                logger.warning("limits: %d settlements dropped while Redis is unavailable", len(batch))

    async def _renew_loop(self) -> None:
        """Push the expiry of every running request's slot forward, a few times per TTL."""
        ttl_ms = int(settings.INFERENCE_LIMITS_SLOT_TTL_S * 1000)
        while True:
            await asyncio.sleep(settings.INFERENCE_LIMITS_SLOT_TTL_S / 3)
            if not self._active:
                continue
            expiry = int(self._clock() * 1000) + ttl_ms
            pipe = self._redis.pipeline(transaction=False)
            for admission in list(self._active.values()):
                for scope in range(admission.scopes):
                    concurrency_key = admission.keys[scope * 6 + 2]
                    pipe.zadd(concurrency_key, {admission.slot: expiry}, xx=True)
                    pipe.pexpire(concurrency_key, ttl_ms + 1000)
            with contextlib.suppress(RedisError, OSError):
                await pipe.execute()

    async def _settle_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_settlements()
