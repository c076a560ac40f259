"""Every limit kind: admit, refuse (headers and error body), reset, and the Redis outage policy.

The limiter runs its real Lua scripts against Redis (the real server when REDIS_URL is set, the in-process
stand-in otherwise); time is the one thing the tests control, through the limiter's clock.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from core.quotas import duration as _duration
from core.redis import new_async_redis
from inference.gateway.auth import KeyRecord
from inference.gateway.errors import GatewayError
from inference.gateway.limits import Limiter

SYDNEY = ZoneInfo("Australia/Sydney")
# 10:00:05 on Wednesday 11 November 2026, Sydney time: early in a minute, mid-day, mid-month.
START = datetime(2026, 11, 11, 10, 0, 5, tzinfo=SYDNEY).timestamp()


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(tenant: dict | None = None, key: dict | None = None, *, tenant_id="t-1", key_id="k-1") -> KeyRecord:
    return KeyRecord(
        key_id=key_id, tenant=tenant_id, tenant_status="active", hash="", scopes=frozenset({"inference"}),
        models=frozenset(), expires=None, revoked=False, tenant_limits=tenant or {}, key_limits=key or {},
    )


@pytest.fixture
async def limiter():
    client = new_async_redis()
    clock = Clock()
    limiter = Limiter(client, clock=clock)
    limiter.clock = clock
    await limiter.start()
    yield limiter
    await limiter.stop()
    await client.aclose()


async def refused(limiter, rec, **cost) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await limiter.admit(rec, **{"tokens": 1, "spend": 0, **cost})
    assert caught.value.status == 429
    return caught.value


async def settle_now(limiter, admission, *, tokens: int, spend: int = 0) -> None:
    limiter.settle(admission, tokens=tokens, spend=spend)
    await limiter._flush_settlements()


async def test_no_limits_means_nothing_to_count(limiter):
    assert await limiter.admit(record(), tokens=10, spend=0) is None


async def test_requests_per_minute(limiter):
    rec = record({"rpm": 3})
    admissions = [await limiter.admit(rec, tokens=1, spend=0) for _ in range(3)]
    assert dict(admissions[0].headers)[b"x-ratelimit-limit-requests"] == b"3"
    assert [dict(a.headers)[b"x-ratelimit-remaining-requests"] for a in admissions] == [b"2", b"1", b"0"]
    assert dict(admissions[0].headers)[b"x-ratelimit-reset-requests"] == b"55s"
    error = await refused(limiter, rec)
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert error.headers["retry-after"] == "55" and error.headers["x-ratelimit-reset-requests"] == "55s"
    assert "requests per minute" in error.message and "limit 3" in error.message
    limiter.clock.now += 60  # next minute
    assert await limiter.admit(rec, tokens=1, spend=0) is not None


async def test_tokens_per_minute_reserve_then_refund(limiter):
    rec = record({"tpm": 100})
    first = await limiter.admit(rec, tokens=40, spend=0)
    assert dict(first.headers)[b"x-ratelimit-remaining-tokens"] == b"60"
    second = await limiter.admit(rec, tokens=40, spend=0)
    error = await refused(limiter, rec, tokens=40)
    assert error.type == "tokens" and "tokens per minute" in error.message
    # The requests used 10 tokens each: the unused reservation comes back.
    await settle_now(limiter, first, tokens=10)
    await settle_now(limiter, second, tokens=10)
    assert await limiter.admit(rec, tokens=40, spend=0) is not None
    assert await limiter.admit(rec, tokens=40, spend=0) is not None
    limiter.clock.now += 60
    assert dict((await limiter.admit(rec, tokens=100, spend=0)).headers)[b"x-ratelimit-remaining-tokens"] == b"0"


async def test_concurrent_requests_free_on_settle_and_expire_when_abandoned(limiter, settings):
    rec = record({"concurrent": 2})
    one = await limiter.admit(rec, tokens=1, spend=0)
    await limiter.admit(rec, tokens=1, spend=0)  # never settled: its worker "died"
    error = await refused(limiter, rec)
    assert "concurrent requests" in error.message and error.headers["retry-after"] == "1"
    await settle_now(limiter, one, tokens=1)
    assert await limiter.admit(rec, tokens=1, spend=0) is not None
    await refused(limiter, rec)
    limiter.clock.now += settings.INFERENCE_LIMITS_SLOT_TTL_S + 1  # the abandoned slots expire
    assert await limiter.admit(rec, tokens=1, spend=0) is not None


async def test_a_settlement_goes_out_with_the_next_admission(own_redis):
    """A client with one concurrent request that sends its next as soon as the last one ends is admitted at
    once: the waiting settlement rides ahead of the admission in the same write, rather than after its gather."""
    from core.redis import new_hot_redis

    hot = new_hot_redis(own_redis.url)  # the gateway's own connection: commands keep their order
    limiter = Limiter(hot)
    await limiter.start()
    rec = record({"concurrent": 1})
    try:
        await settle_now(limiter, await limiter.admit(rec, tokens=1, spend=0), tokens=1)  # both scripts loaded
        for _ in range(20):
            admission = await limiter.admit(rec, tokens=1, spend=0)
            limiter.settle(admission, tokens=1, spend=0)  # no flush: the next admission carries it
        assert await limiter.admit(rec, tokens=1, spend=0) is not None
    finally:
        await limiter.stop()
        await hot.aclose()


async def test_daily_tokens_reset_at_sydney_midnight(limiter):
    rec = record({"day_tokens": 50})
    await limiter.admit(rec, tokens=50, spend=0)
    error = await refused(limiter, rec)
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert "daily token budget (50 tokens)" in error.message and "12 Nov 2026 00:00" in error.message
    assert int(error.headers["retry-after"]) == 14 * 3600 - 5
    limiter.clock.now = datetime(2026, 11, 12, 0, 0, 1, tzinfo=SYDNEY).timestamp()
    assert await limiter.admit(rec, tokens=50, spend=0) is not None


async def test_monthly_token_budget_resets_on_the_first(limiter):
    rec = record({"month_tokens": 1000})
    admission = await limiter.admit(rec, tokens=900, spend=0)
    await settle_now(limiter, admission, tokens=990)  # used more than reserved: counted in full
    error = await refused(limiter, rec, tokens=20)
    assert "monthly token budget (1,000 tokens)" in error.message and "1 Dec 2026 00:00" in error.message
    limiter.clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=SYDNEY).timestamp()
    assert await limiter.admit(rec, tokens=20, spend=0) is not None


async def test_monthly_spend_cap_in_aud(limiter):
    rec = record({"month_spend": 5_000_000})  # A$5.00
    await limiter.admit(rec, tokens=1, spend=4_000_000)
    error = await refused(limiter, rec, spend=1_500_000)
    assert error.code == "insufficient_quota" and "monthly spend cap (A$5.00)" in error.message
    assert await limiter.admit(rec, tokens=1, spend=1_000_000) is not None  # exactly to the cap is fine


async def test_key_limits_apply_on_top_of_the_tenants(limiter):
    tenant = {"rpm": 10}
    narrow = record(tenant, {"rpm": 2}, key_id="narrow")
    other = record(tenant, key_id="other")
    await limiter.admit(narrow, tokens=1, spend=0)
    admission = await limiter.admit(narrow, tokens=1, spend=0)
    assert dict(admission.headers)[b"x-ratelimit-limit-requests"] == b"2"  # the tighter of the two
    await refused(limiter, narrow)
    for _ in range(8):
        await limiter.admit(other, tokens=1, spend=0)  # the tenant's remaining 8
    await refused(limiter, other)


async def test_a_refused_request_reserves_nothing(limiter):
    rec = record({"rpm": 100, "tpm": 50})
    await refused(limiter, rec, tokens=60)
    admission = await limiter.admit(rec, tokens=50, spend=0)
    assert dict(admission.headers)[b"x-ratelimit-remaining-requests"] == b"99"


async def test_redis_down_fails_closed_by_default(settings):
    settings.INFERENCE_LIMITS_ON_REDIS_ERROR = "closed"
    client = new_async_redis("redis://127.0.0.1:1/0")
    limiter = Limiter(client)
    with pytest.raises(GatewayError) as caught:
        await limiter.admit(record({"rpm": 100}), tokens=1, spend=0)
    assert caught.value.status == 503 and caught.value.headers["retry-after"]
    await client.aclose()


async def test_redis_down_fail_open_uses_a_local_share_for_a_bounded_time(settings):
    settings.INFERENCE_LIMITS_ON_REDIS_ERROR = "open"
    settings.INFERENCE_LIMITS_LOCAL_FRACTION = 0.25
    client = new_async_redis("redis://127.0.0.1:1/0")
    limiter = Limiter(client)
    rec = record({"rpm": 8, "concurrent": 4})
    first = await limiter.admit(rec, tokens=1, spend=0)
    assert first.local
    error = await refused(limiter, rec)  # a quarter of 4 concurrent: one at a time
    assert "concurrent" in error.message
    limiter.settle(first, tokens=1, spend=0)
    await limiter.admit(rec, tokens=1, spend=0)
    settings.INFERENCE_LIMITS_FAIL_OPEN_MAX_S = 0  # the bounded time is over: closed
    with pytest.raises(GatewayError) as caught:
        await limiter.admit(record({"rpm": 8}, tenant_id="t-2"), tokens=1, spend=0)
    assert caught.value.status == 503
    await client.aclose()


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "1s"), (59, "59s"), (60, "1m0s"), (3725, "1h2m5s")])
def test_reset_durations_use_openais_format(seconds, text):
    assert _duration(seconds) == text


@pytest.fixture
def own_redis():
    from tests.services import private_redis

    with private_redis() as server:
        yield server


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_stopping_redis_applies_the_outage_policy_and_recovers(own_redis, settings, policy):
    from core.redis import new_hot_redis

    settings.INFERENCE_LIMITS_ON_REDIS_ERROR = policy
    settings.INFERENCE_LIMITS_LOCAL_FRACTION = 0.5
    limiter = Limiter(new_hot_redis(own_redis.url))
    rec = record({"rpm": 4})
    assert (await limiter.admit(rec, tokens=1, spend=0)).local is False
    own_redis.stop()
    if policy == "closed":
        with pytest.raises(GatewayError) as caught:
            await limiter.admit(rec, tokens=1, spend=0)
        assert caught.value.status == 503 and caught.value.code == "service_unavailable"
    else:
        admitted = [await limiter.admit(rec, tokens=1, spend=0) for _ in range(2)]  # half of 4, locally
        assert all(a.local for a in admitted)
        error = await refused(limiter, rec)
        assert error.code == "rate_limit_exceeded"
    own_redis.start()
    back = await limiter.admit(rec, tokens=1, spend=0)
    assert back is not None and back.local is False  # Redis again decides, as soon as it answers


async def test_redis_down_local_counters_are_never_reset_to_make_room(settings):
    """With Redis away, a flood of other scopes must not wipe a tenant's local count mid-window."""
    settings.INFERENCE_LIMITS_ON_REDIS_ERROR = "open"
    settings.INFERENCE_LIMITS_LOCAL_FRACTION = 0.5
    client = new_async_redis("redis://127.0.0.1:1/0")
    clock = Clock()
    limiter = Limiter(client, clock=clock)
    busy = record({"day_tokens": 200}, tenant_id="busy")
    first = await limiter.admit(busy, tokens=100, spend=0)  # the local share of the day (100 tokens) is used up
    limiter.settle(first, tokens=100, spend=0)
    for n in range(10_000):  # more counters than the table kept before it was emptied to make room
        admission = await limiter.admit(record({"rpm": 10}, tenant_id=f"t-{n}"), tokens=1, spend=0)
        limiter.settle(admission, tokens=1, spend=0)
    error = await refused(limiter, busy)
    assert "daily token budget" in error.message
    clock.now += 60  # a new minute: per-minute counters start again, the day's count stands
    assert "daily token budget" in (await refused(limiter, busy)).message
    assert not limiter._local_slots  # settled requests leave no empty slot sets behind
    await client.aclose()
