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
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from redis.exceptions import RedisError

from core.fastredis import FastRedis, RedisPyCommands
from core.redis import key as redis_key
from inference.gateway.errors import GatewayError

logger = logging.getLogger("wattle.limits")

KINDS = ("rpm", "tpm", "concurrent", "day_tokens", "month_tokens", "month_spend")
_SYDNEY = ZoneInfo("Australia/Sydney")
_NONE = -1
_SETTLE_GATHER_S = 0.002
_HASH_TTL_MS = 40 * 86_400_000  # a scope's hash outlives its month by a few days, then goes if unused

# ARGV: now_ms, slot_ttl_ms, minute, day, month, hash_ttl_ms, then per request: scope count, slot, tokens, spend,
# started_ms, and per scope: hash key, concurrency key, limits ("rpm,tpm,concurrent,day,month,spend", -1 = none).
# Returns five numbers per request: {1, tenant rpm used, tenant tpm used, key rpm used, key tpm used} when
# admitted, {0, scope index, kind index, used, 0} when refused.
# 'ms' and 'ds' say since when a hash counts its month and its day: the earliest start (the usage event's
# ``created``) of the requests it counted in that window. What started before comes from PostgreSQL when Redis
# has lost its data (``billing.limit_counters``); a hash without them counts from before they existed.
_ADMIT = """
local now = tonumber(ARGV[1])
local slot_ttl = tonumber(ARGV[2])
local minute, day, month = ARGV[3], ARGV[4], ARGV[5]
local hash_ttl = tonumber(ARGV[6])
local out = {}
local i = 7
while i <= #ARGV do
  local nscopes, slot = tonumber(ARGV[i]), ARGV[i + 1]
  local tokens, spend = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local started = ARGV[i + 4]
  i = i + 5
  local scopes, refused = {}, nil
  for s = 1, nscopes do
    local hk, ck = ARGV[i], ARGV[i + 1]
    local lim = {}
    for v in string.gmatch(ARGV[i + 2], '[^,]+') do lim[#lim + 1] = tonumber(v) end
    i = i + 3
    local h = redis.call('HMGET', hk, 'm', 'rpm', 'tpm', 'd', 'dtok', 'mo', 'mtok', 'msp', 'ms', 'ds')
    local rpm, tpm, dtok, mtok, msp = 0, 0, 0, 0, 0
    if h[1] == minute then rpm = tonumber(h[2]) or 0; tpm = tonumber(h[3]) or 0 end
    if h[4] == day then dtok = tonumber(h[5]) or 0 end
    if h[6] == month then mtok = tonumber(h[7]) or 0; msp = tonumber(h[8]) or 0 end
    local conc = 0
    if lim[3] >= 0 then
      redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
      conc = redis.call('ZCARD', ck)
    end
    if not refused then
      local used = {rpm, tpm, conc, dtok, mtok, msp}
      local cost = {1, tokens, 1, tokens, tokens, spend}
      for k = 1, 6 do
        if lim[k] >= 0 and used[k] + cost[k] > lim[k] then
          refused = {0, s - 1, k, used[k], 0}
          break
        end
      end
    end
    local ms, ds = false, false
    if h[6] ~= month then ms = started elseif h[9] and tonumber(started) < tonumber(h[9]) then ms = started end
    if h[4] ~= day then ds = started elseif h[10] and tonumber(started) < tonumber(h[10]) then ds = started end
    scopes[s] = {hk, ck, lim[3], rpm, tpm, dtok, mtok, msp, ms, ds}
  end
  if refused then
    for _, v in ipairs(refused) do out[#out + 1] = v end
  else
    for s = 1, nscopes do
      local sc = scopes[s]
      redis.call('HSET', sc[1], 'm', minute, 'rpm', sc[4] + 1, 'tpm', sc[5] + tokens, 'd', day,
                 'dtok', sc[6] + tokens, 'mo', month, 'mtok', sc[7] + tokens, 'msp', sc[8] + spend)
      if sc[9] then redis.call('HSET', sc[1], 'ms', sc[9]) end
      if sc[10] then redis.call('HSET', sc[1], 'ds', sc[10]) end
      redis.call('PEXPIRE', sc[1], hash_ttl)
      if sc[3] >= 0 then
        redis.call('ZADD', sc[2], now + slot_ttl, slot)
        redis.call('PEXPIRE', sc[2], slot_ttl + 1000)
      end
    end
    local t, k = scopes[1], scopes[2]
    out[#out + 1] = 1
    out[#out + 1] = t[4]
    out[#out + 1] = t[5]
    out[#out + 1] = k and k[4] or 0
    out[#out + 1] = k and k[5] or 0
  end
end
return out
"""

# ARGV, nine per settlement: hash key, concurrency key, slot, minute, day, month, token delta, spend delta,
# started_ms. A delta lands only in the window the request was admitted in (a new window starts from zero
# anyway), and only in a hash that holds its reservation: one that began counting after the request started
# (Redis lost its data meanwhile) never had it, and the usage event brings the true count to a rebuild.
_SETTLE = """
for i = 1, #ARGV, 9 do
  local hk = ARGV[i]
  redis.call('ZREM', ARGV[i + 1], ARGV[i + 2])
  local td, sd = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
  if td ~= 0 or sd ~= 0 then
    local h = redis.call('HMGET', hk, 'm', 'd', 'mo', 'ds', 'ms')
    local started = tonumber(ARGV[i + 8])
    local in_day = h[2] == ARGV[i + 4] and (not h[4] or started >= tonumber(h[4]))
    local in_month = h[3] == ARGV[i + 5] and (not h[5] or started >= tonumber(h[5]))
    if td ~= 0 then
      if h[1] == ARGV[i + 3] then redis.call('HINCRBY', hk, 'tpm', td) end
      if in_day then redis.call('HINCRBY', hk, 'dtok', td) end
      if in_month then redis.call('HINCRBY', hk, 'mtok', td) end
    end
    if sd ~= 0 and in_month then redis.call('HINCRBY', hk, 'msp', sd) end
  end
end
return 1
"""


@dataclass(slots=True)
class Windows:
    minute: str
    day: str
    month: str
    minute_reset_s: float
    day_reset_s: float
    month_reset_s: float


class _Calendar:
    """Window ids for "now", recomputing the Sydney day and month only when one ends."""

    def __init__(self) -> None:
        self._day_start = self._day_end = 0.0
        self._day = self._month = ""
        self._month_end = 0.0

    def now(self, now: float) -> Windows:
        if not self._day_start <= now < self._day_end:
            local = datetime.fromtimestamp(now, _SYDNEY)
            start = datetime.combine(local.date(), datetime.min.time(), _SYDNEY)
            midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), _SYDNEY)
            first = (local.replace(day=1) + timedelta(days=32)).replace(day=1)
            next_month = datetime.combine(first.date(), datetime.min.time(), _SYDNEY)
            self._day, self._month = local.strftime("%Y%m%d"), local.strftime("%Y%m")
            self._day_start, self._day_end = start.timestamp(), midnight.timestamp()
            self._month_end = next_month.timestamp()
        minute = int(now // 60)
        return Windows(
            str(minute), self._day, self._month, (minute + 1) * 60 - now, self._day_end - now, self._month_end - now
        )


def scope_keys(scope: str) -> tuple[str, str]:
    """The counters hash and the concurrency set of a scope (``t:<tenant id>`` or ``k:<key id>``)."""
    base = f"{redis_key('rl')}:{scope}"
    return base, f"{base}:conc"


def periods(now: float) -> Windows:
    """The windows containing ``now`` (ids and time to their ends), as the limiter sees them."""
    return _Calendar().now(now)


def read_usage(client, scopes: list[str], now: float) -> dict[str, dict[str, int]]:
    """What the limiter has counted for each scope in the windows containing ``now``, in one round trip
    (control plane: consoles, alerts). Token counters hold reservations while requests run."""
    if not scopes:
        return {}
    windows = periods(now)
    now_ms = int(now * 1000)
    pipe = client.pipeline(transaction=False)
    for scope in scopes:
        hash_key, conc_key = scope_keys(scope)
        pipe.hmget(hash_key, "m", "rpm", "tpm", "d", "dtok", "mo", "mtok", "msp")
        pipe.zcount(conc_key, f"({now_ms}", "+inf")
    replies = pipe.execute()
    usage = {}
    for index, scope in enumerate(scopes):
        m, rpm, tpm, d, dtok, mo, mtok, msp = (v.decode() if isinstance(v, bytes) else v for v in replies[2 * index])
        this_minute, today, this_month = m == windows.minute, d == windows.day, mo == windows.month
        usage[scope] = {
            "rpm": int(rpm or 0) if this_minute else 0,
            "tpm": max(0, int(tpm or 0)) if this_minute else 0,
            "concurrent": int(replies[2 * index + 1]),
            "day_tokens": max(0, int(dtok or 0)) if today else 0,
            "month_tokens": max(0, int(mtok or 0)) if this_month else 0,
            "month_spend": max(0, int(msp or 0)) if this_month else 0,
        }
    return usage


# --- rebuilding the day and month counters after Redis lost its data (control plane) --------------------------
COUNTERS_REBUILD_TASK = "billing.tasks.rebuild_limit_counters"
_REBUILD_GUARD_S = 300

# What a rebuild must do for one window of one hash: 'done' (rebuilt since the data was lost), 'fresh' (nothing
# counted in this window: start it from the database), 'trust' (counting since before 'ms'/'ds' existed), or
# the hash's since-time in ms (add what the database has from the window's start until then).
_STATE_LUA = """
local function state(tag, since, done, window)
  if done == window then return 'done' end
  if tag ~= window then return 'fresh' end
  if not since then return 'trust' end
  return since
end
"""

# ARGV: month, day, then hash keys. Returns the month's and the day's state of each hash.
_COUNTER_STATES = _STATE_LUA + """
local out = {}
for i = 3, #ARGV do
  local h = redis.call('HMGET', ARGV[i], 'mo', 'ms', 'mr', 'd', 'ds', 'dr')
  out[#out + 1] = state(h[1], h[2], h[3], ARGV[1])
  out[#out + 1] = state(h[4], h[5], h[6], ARGV[2])
end
return out
"""

# ARGV: month, day, fresh_since_ms, hash_ttl_ms, guard key, guard token, then six per hash: key, the month's
# state the totals were computed for, month tokens, month spend, the day's state, day tokens. A hash whose
# state changed since (a request arrived) is left alone and answers 0, to be computed again; 1 when done.
# Answers {-1} without touching anything if the guard is gone: Redis lost its data again during the rebuild.
_REBUILD = _STATE_LUA + """
if redis.call('GET', ARGV[5]) ~= ARGV[6] then return {-1} end
local month, day, fresh, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 7, #ARGV, 6 do
  local hk = ARGV[i]
  local h = redis.call('HMGET', hk, 'mo', 'ms', 'mr', 'd', 'ds', 'dr')
  local mstate, dstate = state(h[1], h[2], h[3], month), state(h[4], h[5], h[6], day)
  if mstate ~= ARGV[i + 1] or dstate ~= ARGV[i + 4] then
    out[#out + 1] = 0
  else
    if mstate == 'fresh' then
      redis.call('HSET', hk, 'mo', month, 'mtok', ARGV[i + 2], 'msp', ARGV[i + 3], 'ms', fresh, 'mr', month)
    elseif mstate ~= 'done' then
      redis.call('HINCRBY', hk, 'mtok', ARGV[i + 2])
      redis.call('HINCRBY', hk, 'msp', ARGV[i + 3])
      redis.call('HSET', hk, 'mr', month)
    end
    if dstate == 'fresh' then
      redis.call('HSET', hk, 'd', day, 'dtok', ARGV[i + 5], 'ds', fresh, 'dr', day)
    elseif dstate ~= 'done' then
      redis.call('HINCRBY', hk, 'dtok', ARGV[i + 5])
      redis.call('HSET', hk, 'dr', day)
    end
    redis.call('PEXPIRE', hk, ttl)
    out[#out + 1] = 1
  end
end
return out
"""

# ARGV: guard key, guard token, marker key, marker ttl ms. The marker is set only by the rebuild that holds the
# guard: if Redis lost its data while it ran, the guard went with it and the counters stay untrusted.
_REBUILD_FINISH = """
if redis.call('GET', ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('SET', ARGV[3], '1', 'PX', ARGV[4])
redis.call('DEL', ARGV[1])
return 1
"""


def counters_marker_key(month: str) -> str:
    """Present while the month's and the day's counters are whole: set by a rebuild from the database, gone
    with everything else when Redis loses its data (so its absence means "rebuild before trusting them")."""
    return redis_key("limits", "rebuilt", month)


def _counters_guard_key(month: str) -> str:
    return redis_key("limits", "rebuilding", month)


@dataclass(frozen=True, slots=True)
class CounterWindows:
    """The windows a rebuild fills and where they start (epoch seconds, Sydney calendar)."""

    day: str
    month: str
    day_start: float
    month_start: float


def counter_windows(now: float) -> CounterWindows:
    local = datetime.fromtimestamp(now, _SYDNEY)
    day_start = datetime.combine(local.date(), datetime.min.time(), _SYDNEY)
    return CounterWindows(day=local.strftime("%Y%m%d"), month=local.strftime("%Y%m"),
                          day_start=day_start.timestamp(), month_start=day_start.replace(day=1).timestamp())


@dataclass(frozen=True, slots=True)
class CounterState:
    """What a rebuild must add to one scope's hash, per window: 'done', 'fresh', 'trust' or a since-time."""

    month: str
    day: str

    @staticmethod
    def cutoff(state: str, fresh_since: float) -> float | None:
        """Usage events that started before this time (epoch seconds) are missing from the hash; None: none."""
        if state == "fresh":
            return fresh_since
        if state in ("done", "trust"):
            return None
        return int(state) / 1000


@dataclass(frozen=True, slots=True)
class CounterTotals:
    scope: str
    state: CounterState
    month_tokens: int
    month_spend: int  # micro-AUD
    day_tokens: int


def counters_rebuild_begin(client, windows: CounterWindows) -> str | None:
    """Take the month's rebuild guard; None if another rebuild holds it."""
    token = secrets.token_hex(8)
    if not client.set(_counters_guard_key(windows.month), token, nx=True, ex=_REBUILD_GUARD_S):
        return None
    return token


def counters_states(client, scopes: list[str], windows: CounterWindows) -> dict[str, CounterState]:
    states: dict[str, CounterState] = {}
    for start in range(0, len(scopes), 1000):
        chunk = scopes[start : start + 1000]
        reply = client.eval(_COUNTER_STATES, 0, windows.month, windows.day, *(scope_keys(s)[0] for s in chunk))
        for index, scope in enumerate(chunk):
            month, day = (v.decode() if isinstance(v, bytes) else str(v) for v in reply[2 * index : 2 * index + 2])
            states[scope] = CounterState(month=month, day=day)
    return states


def counters_rebuild_apply(client, totals: list[CounterTotals], windows: CounterWindows, *, fresh_since: float,
                           token: str) -> list[str] | None:
    """Add the database's totals to the hashes whose state is still what they were computed for. Returns the
    scopes to compute again (a request changed their state meanwhile), or None if Redis lost its data again."""
    retry = []
    for start in range(0, len(totals), 500):
        chunk = totals[start : start + 500]
        args = [windows.month, windows.day, int(fresh_since * 1000), _HASH_TTL_MS, _counters_guard_key(windows.month),
                token]
        for item in chunk:
            args += [scope_keys(item.scope)[0], item.state.month, item.month_tokens, item.month_spend, item.state.day,
                     item.day_tokens]
        reply = client.eval(_REBUILD, 0, *args)
        if reply and int(reply[0]) == -1:
            return None
        retry += [item.scope for item, done in zip(chunk, reply, strict=True) if int(done) == 0]
    return retry


def counters_rebuild_finish(client, windows: CounterWindows, token: str, *, complete: bool) -> bool:
    """Mark the counters whole (``complete``) or just give the guard back; False if the guard was lost."""
    guard = _counters_guard_key(windows.month)
    if not complete:
        client.eval("if redis.call('GET', ARGV[1]) == ARGV[2] then redis.call('DEL', ARGV[1]) end return 1", 0,
                    guard, token)
        return False
    return bool(client.eval(_REBUILD_FINISH, 0, guard, token, counters_marker_key(windows.month), _HASH_TTL_MS))


def request_counters_rebuild() -> None:
    """Ask the control plane (a Celery worker) to rebuild the counters from the database: the data plane never
    reads it. Embedded mode has no worker; its web process runs the rebuild itself (``portal.lifespan``)."""
    from portal.celery import app

    if app.conf.task_always_eager:
        return
    app.send_task(COUNTERS_REBUILD_TASK)


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


def _limits_arg(scope: dict) -> str:
    return ",".join(str(scope.get(kind, _NONE)) for kind in KINDS)


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


_REFUSALS = {
    1: ("requests per minute", "rate_limit_exceeded"),
    2: ("tokens per minute", "rate_limit_exceeded"),
    3: ("concurrent requests", "rate_limit_exceeded"),
    4: ("daily token budget", "insufficient_quota"),
    5: ("monthly token budget", "insufficient_quota"),
    6: ("monthly spend cap", "insufficient_quota"),
}


# ARGV: the slots' new expiry, the sets' time to live (ms), then pairs of concurrency key and slot: push the
# expiry of running requests' slots forward.
_RENEW = """
for i = 3, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], 'XX', ARGV[1], ARGV[i + 1])
  redis.call('PEXPIRE', ARGV[i], ARGV[2])
end
return 1
"""


class Limiter:
    def __init__(self, redis, *, clock=time.time) -> None:
        """``redis``: the data plane's hot-command client (``core.redis.new_hot_redis``) or a redis-py
        client, which is wrapped."""
        self._clock = clock  # wall-clock seconds; windows follow it
        self._redis = redis if isinstance(redis, FastRedis | RedisPyCommands) else RedisPyCommands(redis)
        self._calendar = _Calendar()
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
            item += [hash_key, conc_key, _limits_arg(scope_limits)]
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
                windows.month, _HASH_TTL_MS]
        for _when_windows, item, _future in batch:
            args += item

        def answer(results) -> None:
            # Called as Redis's reply is read: the requests wake a loop turn sooner than through this task.
            for index, (_ww, _item, future) in enumerate(batch):
                if not future.done():
                    future.set_result(results[5 * index : 5 * index + 5])

        try:
            answer(await self._redis.evalsha(_ADMIT, [], args, on_reply=answer))
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
        label, code = _REFUSALS[kind]
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
            message = f"Rate limit reached for {label}: limit {limit:,}. Please try again in {_duration(retry)}."
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
        costs = (1, tokens, 1, tokens, tokens, spend)
        for name, scope in zip(names, limits, strict=True):
            for index, kind in enumerate(KINDS):
                limit = scope.get(kind)
                if limit is None:
                    continue
                used = len(self._local_slots.get(name, ())) if kind == "concurrent" else counters.get((name, kind), 0)
                if used + costs[index] > max(1, int(limit * fraction)):
                    raise self._refusal(scope, index + 1, windows)
        for name in names:
            self._local_slots.setdefault(name, set()).add(slot)
            for kind, cost in zip(KINDS, costs, strict=True):
                if kind != "concurrent":
                    counters[(name, kind)] = counters.get((name, kind), 0) + cost
        return Admission(scopes=[], windows=windows, slot=slot, tokens=tokens, spend=spend, local=True,
                         local_names=tuple(names))

    def _local_counters(self, windows: Windows) -> dict[tuple[str, str], int]:
        """The per-worker counters of the windows containing now, keyed by (scope, kind). A counter is dropped
        only when its window has ended (a new minute, day or month starts from zero anyway), never to make
        room: memory is bounded by the scopes seen in the current windows."""
        current = (windows.minute, windows.day, windows.month)
        if self._local_windows != current:
            _minute, day, month = self._local_windows
            still_open = {"day_tokens": windows.day == day, "month_tokens": windows.month == month,
                          "month_spend": windows.month == month}
            self._local = {counter: used for counter, used in self._local.items() if still_open.get(counter[1])}
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
                await self._redis.evalsha(_SETTLE, [], args)
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
                await self._redis.evalsha(_RENEW, [], args)
