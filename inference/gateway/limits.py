"""Admission control: every limit of a tenant and of its key checked and reserved atomically in Redis.

One Lua script admits a request: for the tenant and (when the key has limits of its own) the key, it checks
requests per minute, tokens per minute, concurrent requests, tokens per day, tokens per month and spend per
month, and only if all pass, counts the request and reserves ``estimated prompt tokens + max_tokens`` and the
spend they would cost. When the request ends, settlement replaces the reservation with the true counts from
upstream usage and frees its concurrency slot. Slots carry an expiry that the worker renews while the request
runs, so the slots of a worker that died come back on their own within ``INFERENCE_LIMITS_SLOT_TTL_S``.

Cheap by construction: a scope's counters live in one hash (fields tagged with their window, so a new window
starts from zero without a key per window), only limited kinds are checked, and requests that arrive in the
same event-loop turn share one script call (each still admitted atomically, one after the other, inside it);
settlements are batched the same way off the request path.

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

from django.conf import settings
from redis.exceptions import RedisError

from core import jobs, quotas
from core.counters import ADMIT, HASH_TTL_MS, RENEW, SETTLE, counters_marker_key, limits_arg, scope_keys
from core.fastredis import FastRedis, RedisPyCommands
from core.quotas import Windows
from inference.gateway.errors import GatewayError

logger = logging.getLogger("wattle.limits")

_SETTLE_GATHER_S = 0.002

def request_counters_rebuild() -> None:
    """Ask the control plane (a Celery worker) to rebuild the counters from the database: the data plane never
    reads it. Embedded mode has no worker; its web process runs the rebuild itself (``portal.lifespan``)."""
    jobs.raise_job(jobs.REBUILD_LIMIT_COUNTERS, broker_url=settings.CELERY_BROKER_URL,
                   eager=settings.CELERY_TASK_ALWAYS_EAGER)


@dataclass(slots=True)
class Admission:
    scopes: list[tuple[str, str, bool]]  # (hash key, concurrency key, counts concurrency) per scope
    windows: Windows
    slot: str
    tokens: int
    spend: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    local: bool = False  # admitted against per-worker counters while Redis was away
    local_names: tuple[str, ...] = ()
    started_ms: int = 0  # when the request started (its usage event's ``created``), for settlement


@dataclass(slots=True)
class PendingAdmission:
    """An admission queued for this loop turn's script call: what ``Limiter.finish`` needs to conclude it."""

    future: asyncio.Future
    names: list[str]
    limits: list[dict]
    scopes: list[tuple[str, str, bool]]
    windows: Windows
    slot: str
    tokens: int
    spend: int
    started_ms: int







class Limiter:
    def __init__(self, redis, *, clock=time.time) -> None:
        """``redis``: the data plane's hot-command client (``core.redis.new_hot_redis``) or a redis-py
        client, which is wrapped."""
        self._clock = clock  # wall-clock seconds; windows follow it
        self._redis = redis if isinstance(redis, FastRedis | RedisPyCommands) else RedisPyCommands(redis)
        self._calendar = quotas.Calendar()
        self._queue: list[tuple[list, asyncio.Future]] = []
        self._flush_scheduled = False
        self._pending: list[list] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._failing_since: float | None = None
        self._local: dict[tuple[str, str], int] = {}  # with Redis away: (scope, kind) -> used this window
        self._local_windows: tuple[str, str, str] = ("", "", "")  # the (minute, day, month) they count
        self._local_slots: dict[str, set[str]] = {}
        self._active: dict[str, Admission] = {}  # slot -> admission, for renewing long requests' slots
        self._background: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slot_ttl_ms = int(settings.INFERENCE_LIMITS_SLOT_TTL_S * 1000)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._settle_loop()), asyncio.create_task(self._renew_loop())]
        self.counters_checked = asyncio.create_task(self._check_counters())
        self._tasks.append(self.counters_checked)

    async def _check_counters(self) -> bool:
        """At start-up: are this month's day and month counters whole? If Redis lost its data (no marker), ask
        the control plane to rebuild them from the usage rows. Admissions go on meanwhile, counting from what
        Redis has; the rebuild adds the rest without counting anything twice."""
        month = self._calendar.now(self._clock()).month
        try:
            if await self._redis.execute("EXISTS", counters_marker_key(month)):
                return True
            # Expected on a new or emptied Redis (every embedded start); after a loss in production it is the
            # sign that the counters are being repaired.
            logger.info("limits: this month's counters are not marked whole (new or emptied Redis); asking the "
                        "control plane to rebuild them from the usage records")
            await asyncio.to_thread(request_counters_rebuild)
        except Exception:
            # Redis (or the broker) away: the periodic rebuild job still checks, every few seconds.
            logger.warning("limits: could not check the counters marker", exc_info=True)
        return False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._flush_settlements()

    # --- admission ---------------------------------------------------------------------------------
    async def admit(self, record, *, tokens: int, spend: int, slot: str | None = None,
                    started: float | None = None) -> Admission | None:
        """Reserve ``tokens`` and ``spend`` (micro-AUD) for a request, or raise the 429 the client should see.

        Returns None when neither the tenant nor the key has any limit (nothing to count)."""
        pending = self.begin(record, tokens=tokens, spend=spend, slot=slot, started=started)
        return None if pending is None else await self.finish(pending)

    def begin(self, record, *, tokens: int, spend: int, slot: str | None = None,
              started: float | None = None) -> PendingAdmission | None:
        """Queue the admission without waiting for it (it goes out with this loop turn's script call), so the
        caller can start other work first; ``finish`` gives the outcome. None when nothing is limited.

        ``started``: when the request started, the ``created`` of its usage event (default: now). A rebuild of
        the counters from usage events relies on it to count every request once."""
        tenant_limits, key_limits = record.tenant_limits, record.key_limits
        if not tenant_limits and not key_limits:
            return None
        now = self._clock()
        windows = self._calendar.now(now)
        limits = [tenant_limits] + ([key_limits] if key_limits else [])
        names = [f"t:{record.tenant}"] + ([f"k:{record.key_id}"] if key_limits else [])
        slot = slot or secrets.token_hex(8)
        started_ms = math.floor((now if started is None else started) * 1000)
        scopes = []
        item = [len(limits), slot, tokens, spend, started_ms]
        for name, scope_limits in zip(names, limits, strict=True):
            hash_key, conc_key = scope_keys(name)
            scopes.append((hash_key, conc_key, "concurrent" in scope_limits))
            item += [hash_key, conc_key, limits_arg(scope_limits)]
        loop = self._loop
        if loop is None or not loop.is_running():  # not started in this loop (tests drive it bare)
            loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(([now, windows], item, future))
        if not self._flush_scheduled:
            # The task's first step runs on the next loop turn, after every request of this turn queued its own.
            self._flush_scheduled = True
            if self._pending:
                # Settlements waiting for their gather go first, in the same write (FastRedis sends a turn's
                # commands together): the slots they free count for this batch, at no extra system call.
                self._spawn(loop, self._flush_settlements())
            self._spawn(loop, self._run_admissions())
        return PendingAdmission(future, names, limits, scopes, windows, slot, tokens, spend, started_ms)

    def _spawn(self, loop: asyncio.AbstractEventLoop, work) -> None:
        task = loop.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def finish(self, pending: PendingAdmission) -> Admission:
        """The admission ``begin`` queued, or the 429 (503 with Redis away and the policy closed) it ended in."""
        try:
            result = await pending.future
        except (RedisError, OSError) as exc:
            return self._admit_without_redis(pending.names, pending.limits, pending.tokens, pending.spend,
                                             pending.windows, pending.slot, exc)
        self._failing_since = None
        limits, windows = pending.limits, pending.windows
        if result[0] == 0:
            raise self._refusal(limits[int(result[1])], int(result[2]), windows)
        admission = Admission(scopes=pending.scopes, windows=windows, slot=pending.slot, tokens=pending.tokens,
                              spend=pending.spend, started_ms=pending.started_ms)
        self._active[pending.slot] = admission
        admission.headers = self._headers(limits, windows, rpm_used=[int(result[1]), int(result[3])],
                                          tpm_used=[int(result[2]), int(result[4])], tokens=pending.tokens)
        return admission

    @property
    def failing(self) -> bool:
        """Redis did not answer the last admission (local counters or 503 until it does)."""
        return self._failing_since is not None

    async def _run_admissions(self) -> None:
        """Admit every request queued in the last loop turn with one script call (in arrival order)."""
        self._flush_scheduled = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        now, windows = batch[0][0]
        args = [int(now * 1000), self._slot_ttl_ms, windows.minute, windows.day,
                windows.month, HASH_TTL_MS]
        for _when_windows, item, _future in batch:
            args += item

        def answer(results) -> None:
            # Called as Redis's reply is read: the requests wake a loop turn sooner than through this task.
            for index, (_ww, _item, future) in enumerate(batch):
                if not future.done():
                    future.set_result(results[5 * index : 5 * index + 5])

        try:
            answer(await self._redis.evalsha(ADMIT, [], args, on_reply=answer))
        except Exception as exc:
            for _ww, _item, future in batch:
                if not future.done():
                    future.set_exception(exc)

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
                (b"x-ratelimit-reset-requests", quotas.duration(windows.minute_reset_s).encode()),
            ]
        token_limit = self._tightest(scopes, "tpm", tpm_used)
        if token_limit:
            headers += [
                (b"x-ratelimit-limit-tokens", str(token_limit[0]).encode()),
                (b"x-ratelimit-remaining-tokens", str(max(0, token_limit[1] - tokens)).encode()),
                (b"x-ratelimit-reset-tokens", quotas.duration(windows.minute_reset_s).encode()),
            ]
        return headers

    def _refusal(self, scope: dict, number: int, windows: Windows) -> GatewayError:
        """The 429 for the limit the admission script refused on (its ``number``: 1-based, table order)."""
        kind = quotas.KINDS[number - 1]
        limit = scope.get(kind.name)
        retry = windows.reset_s(kind) or 1  # a concurrency slot: try again in a second
        retry_after = str(max(1, math.ceil(retry)))
        per_request = kind.counts == "requests"
        reset = {"x-ratelimit-reset-requests" if per_request else "x-ratelimit-reset-tokens": quotas.duration(retry)}
        if kind.code == "rate_limit_exceeded":
            message = (f"Rate limit reached for {kind.refusal}: limit {limit:,}. Please try again in "
                       f"{quotas.duration(retry)}.")
            return GatewayError(429, message, type="requests" if per_request else "tokens", code=kind.code,
                                headers={"retry-after": retry_after, **reset})
        amount = quotas.format_aud(quotas.micro_to_aud(limit)) if kind.money else f"{limit:,} tokens"
        message = (
            f"You have used your {kind.refusal} ({amount}). It resets at {quotas.when(self._clock(), retry)}. "
            "Your organisation's owner or Wattle support can raise it in the console."
        )
        return GatewayError(429, message, type="insufficient_quota", code=kind.code,
                            headers={"retry-after": retry_after, **reset})

    # --- Redis outage ------------------------------------------------------------------------------
    def _admit_without_redis(self, names, limits, tokens, spend, windows, slot, exc) -> Admission:
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
        counters = self._local_counters(windows)
        costs = [quotas.cost(kind, tokens=tokens, spend=spend) for kind in quotas.KINDS]
        for name, scope in zip(names, limits, strict=True):
            for index, kind in enumerate(quotas.KINDS):
                limit = scope.get(kind.name)
                if limit is None:
                    continue
                slots = not kind.window
                used = len(self._local_slots.get(name, ())) if slots else counters.get((name, kind.name), 0)
                if used + costs[index] > max(1, int(limit * fraction)):
                    raise self._refusal(scope, index + 1, windows)
        for name in names:
            self._local_slots.setdefault(name, set()).add(slot)
            for kind, cost in zip(quotas.KINDS, costs, strict=True):
                if kind.window:
                    counters[(name, kind.name)] = counters.get((name, kind.name), 0) + cost
        return Admission(scopes=[], windows=windows, slot=slot, tokens=tokens, spend=spend, local=True,
                         local_names=tuple(names))

    def _local_counters(self, windows: Windows) -> dict[tuple[str, str], int]:
        """The per-worker counters of the windows containing now, keyed by (scope, kind). A counter is dropped
        only when its window has ended (a new minute, day or month starts from zero anyway), never to make
        room: memory is bounded by the scopes seen in the current windows."""
        current = (windows.minute, windows.day, windows.month)
        if self._local_windows != current:
            _minute, day, month = self._local_windows
            still_open = {"minute": False, "day": windows.day == day, "month": windows.month == month}
            self._local = {counter: used for counter, used in self._local.items()
                           if still_open[quotas.BY_NAME[counter[1]].window]}
            self._local_windows = current
        return self._local

    # --- settlement --------------------------------------------------------------------------------
    def settle(self, admission: Admission, *, tokens: int, spend: int) -> None:
        """Replace the reservation with the true counts and free the slot (batched, never blocks)."""
        if admission.local:
            for name in admission.local_names:
                slots = self._local_slots.get(name)
                if slots is not None:
                    slots.discard(admission.slot)
                    if not slots:
                        del self._local_slots[name]
            return
        self._active.pop(admission.slot, None)
        windows = admission.windows
        token_delta, spend_delta = tokens - admission.tokens, spend - admission.spend
        for hash_key, conc_key, _counted in admission.scopes:
            self._pending.append([hash_key, conc_key, admission.slot, windows.minute, windows.day, windows.month,
                                  token_delta, spend_delta, admission.started_ms])
        self._wake.set()

    async def _flush_settlements(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:500], self._pending[500:]
            args = [value for item in batch for value in item]
            try:
                await self._redis.evalsha(SETTLE, [], args)
            except (RedisError, OSError):
                # Slots expire by themselves; token counts stay conservative (the reservation is kept).
                logger.warning("limits: %d settlements dropped while Redis is unavailable", len(batch))

    async def _settle_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Let a few milliseconds of settlements gather: one call carries them all, and the work lands
            # while requests wait on their replicas rather than in front of the next request.
            await asyncio.sleep(_SETTLE_GATHER_S)
            self._wake.clear()
            await self._flush_settlements()

    async def _renew_loop(self) -> None:
        """Push the expiry of every running request's slot forward, a few times per TTL."""
        ttl_ms = int(settings.INFERENCE_LIMITS_SLOT_TTL_S * 1000)
        while True:
            await asyncio.sleep(settings.INFERENCE_LIMITS_SLOT_TTL_S / 3)
            counted = [(a.slot, conc) for a in list(self._active.values()) for _h, conc, on in a.scopes if on]
            if not counted:
                continue
            args = [int(self._clock() * 1000) + ttl_ms, ttl_ms + 1000]
            for slot, conc_key in counted:
                args += [conc_key, slot]
            with contextlib.suppress(RedisError, OSError):
                await self._redis.evalsha(RENEW, [], args)
