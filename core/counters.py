"""The limit counters' Redis schema and the scripts both planes run on it: the data plane admits, settles
and renews (``inference.gateway.limits``); the control plane reads usage for the consoles and alerts
(``read_usage``) and rebuilds the day and month counters from the usage rows after Redis lost its data
(``billing.limit_counters``).

A scope (``t:<tenant id>`` or ``k:<key id>``) keeps its counters in one hash, fields tagged with their window so
a new window starts from zero without a key per window, and its running requests in a sorted set of slots.
The admission script checks the kinds of ``core.quotas.KINDS`` in the table's order; a new kind needs its
counter here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from core import quotas
from core.redis import key as redis_key

NONE = -1  # "no limit" in a scope's limits argument
HASH_TTL_MS = 40 * 86_400_000  # a scope's hash outlives its month by a few days, then goes if unused
# The hash field each kind counts in (concurrency counts the scope's slots instead), and its window's tag field.
COUNTER_FIELDS = {"rpm": ("rpm", "m"), "tpm": ("tpm", "m"), "concurrent": ("", ""), "day_tokens": ("dtok", "d"),
                  "month_tokens": ("mtok", "mo"), "month_spend": ("msp", "mo")}


def limits_arg(scope: dict) -> str:
    """A scope's limits as the admission script reads them: every kind, in the table's order."""
    return ",".join(str(scope.get(kind, NONE)) for kind in quotas.NAMES)


# ARGV: now_ms, slot_ttl_ms, minute, day, month, hash_ttl_ms, then per request: scope count, slot, tokens, spend,
# started_ms, and per scope: hash key, concurrency key, limits ("rpm,tpm,concurrent,day,month,spend", -1 = none).
# Returns five numbers per request: {1, tenant rpm used, tenant tpm used, key rpm used, key tpm used} when
# admitted, {0, scope index, kind index, used, 0} when refused.
# 'ms' and 'ds' say since when a hash counts its month and its day: the earliest start (the usage event's
# ``created``) of the requests it counted in that window. What started before comes from PostgreSQL when Redis
# has lost its data (``billing.limit_counters``); a hash without them counts from before they existed.
ADMIT = """
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
SETTLE = """
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

# ARGV: the slots' new expiry, the sets' time to live (ms), then pairs of concurrency key and slot: push the
# expiry of running requests' slots forward.
RENEW = """
for i = 3, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], 'XX', ARGV[1], ARGV[i + 1])
  redis.call('PEXPIRE', ARGV[i], ARGV[2])
end
return 1
"""


def scope_keys(scope: str) -> tuple[str, str]:
    """The counters hash and the concurrency set of a scope (``t:<tenant id>`` or ``k:<key id>``)."""
    base = f"{redis_key('rl')}:{scope}"
    return base, f"{base}:conc"


def read_usage(client, scopes: list[str], now: float) -> dict[str, dict[str, int]]:
    """What the limiter has counted for each scope in the windows containing ``now``, by kind, in one round
    trip (control plane: consoles, alerts). Token counters hold reservations while requests run."""
    if not scopes:
        return {}
    windows = quotas.windows_at(now)
    now_ms = int(now * 1000)
    fields = ["m", "d", "mo", *(COUNTER_FIELDS[kind][0] for kind in quotas.NAMES if COUNTER_FIELDS[kind][0])]
    pipe = client.pipeline(transaction=False)
    for scope in scopes:
        hash_key, conc_key = scope_keys(scope)
        pipe.hmget(hash_key, *fields)
        pipe.zcount(conc_key, f"({now_ms}", "+inf")
    replies = pipe.execute()
    current = {"m": windows.minute, "d": windows.day, "mo": windows.month}
    usage = {}
    for index, scope in enumerate(scopes):
        values = dict(zip(fields, (v.decode() if isinstance(v, bytes) else v for v in replies[2 * index]),
                          strict=True))
        counted = {}
        for kind in quotas.NAMES:
            counter, tag = COUNTER_FIELDS[kind]
            if not counter:
                counted[kind] = int(replies[2 * index + 1])
            else:
                counted[kind] = max(0, int(values[counter] or 0)) if values[tag] == current[tag] else 0
        usage[scope] = counted
    return usage



# --- rebuilding the day and month counters after Redis lost its data (control plane) ----------------------
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
    windows = quotas.windows_at(now)
    day_start, month_start = quotas.window_starts(now)
    return CounterWindows(day=windows.day, month=windows.month, day_start=day_start, month_start=month_start)


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
        args = [windows.month, windows.day, int(fresh_since * 1000), HASH_TTL_MS, _counters_guard_key(windows.month),
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
    return bool(client.eval(_REBUILD_FINISH, 0, guard, token, counters_marker_key(windows.month), HASH_TTL_MS))
