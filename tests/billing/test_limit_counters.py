"""The limiter's day and month counters survive Redis losing its data: they are rebuilt from the usage events in
the database, on a real redis-server that the tests flush mid-month, and nothing is counted twice.

Requests go through the real limiter (its Lua scripts) and their usage events through the real ingest (the
Redis stream into the database), at a clock the test chooses.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from django.conf import settings

from billing import services
from billing.tasks import rebuild_limit_counters
from core.counters import counters_marker_key, read_usage
from core.jobs import REBUILD_LIMIT_COUNTERS as COUNTERS_REBUILD_TASK
from inference.gateway.auth import KeyRecord
from inference.gateway.errors import GatewayError
from inference.gateway.limits import Limiter
from tenants import keys
from tests.conftest import published_caller

pytestmark = pytest.mark.django_db

SYDNEY = ZoneInfo("Australia/Sydney")
NOW = datetime(2026, 11, 11, 10, 0, 5, tzinfo=SYDNEY).timestamp()  # mid-month, mid-day
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.fixture(scope="module")
def redis_server():
    from tests.services import private_redis

    with private_redis() as server:
        yield server


@pytest.fixture
def real_redis(redis_server, settings, monkeypatch):
    """The control plane and the limiter on a real redis-server of the test's own (flushing it disturbs
    nobody), under a prefix of its own."""
    import core.redis

    settings.REDIS_URL = redis_server.url
    settings.REDIS_KEY_PREFIX = "wattle-counters-test:"
    monkeypatch.setattr(core.redis, "_sync_client", None)
    client = core.redis.get_redis()
    client.flushall()
    yield client
    client.flushall()
    client.close()


class Served:
    """Requests served for a key, as the gateway serves them: admitted by the limiter when they start, settled
    with their true counts when they end, and their usage event written to the stream and ingested."""

    def __init__(self, redis_server, client, plaintext: str) -> None:
        self.redis_server, self.client = redis_server, client
        self.key_id = keys.parse_key(plaintext)[0]
        self.count = 0
        # As the data plane caches it: what the control plane published (a flush also loses the key records,
        # which have a recovery of their own).
        self._record = published_caller(self.key_id, client)

    def record(self) -> KeyRecord:
        return self._record

    async def _limiter(self, now: float, work):
        from core.redis import new_hot_redis

        hot = new_hot_redis(self.redis_server.url)
        try:
            return await work(Limiter(hot, clock=lambda: now))
        finally:
            await hot.aclose()

    def admit(self, *, reserve: int, at: float = NOW):
        async def work(limiter):
            return await limiter.admit(self.record(), tokens=reserve, spend=0, started=at)

        import asyncio

        return asyncio.run(self._limiter(at, work))

    def settle(self, admission, *, prompt: int, completion: int, at: float = NOW) -> None:
        """The request ends: its true counts replace the reservation and its usage event is billed."""
        import asyncio

        async def work(limiter):
            limiter.settle(admission, tokens=prompt + completion, spend=0)
            await limiter._flush_settlements()

        asyncio.run(self._limiter(at, work))
        self.bill(prompt=prompt, completion=completion, started=admission.started_ms / 1000)

    def bill(self, *, prompt: int, completion: int, started: float) -> None:
        self.count += 1
        event = {"request_id": f"req-{self.key_id}-{self.count}", "tenant": self.record().tenant,
                 "key_id": self.key_id, "endpoint": "chat.completions", "model": MODEL, "status": 200,
                 "prompt_tokens": prompt, "completion_tokens": completion, "duration_ms": 5, "created": started}
        self.client.xadd(settings.INFERENCE_USAGE_STREAM, {"e": orjson.dumps(event)})
        services.usage_ingest()

    def serve(self, *, prompt: int, completion: int, reserve: int, at: float = NOW) -> None:
        self.settle(self.admit(reserve=reserve, at=at), prompt=prompt, completion=completion, at=at)


def _usage(client, scope: str, now: float = NOW) -> dict:
    return read_usage(client, [scope], now)[scope]


@pytest.fixture
def budgeted(acme, internal_plan, django_capture_on_commit_callbacks):
    """Acme with a monthly budget of 1,000 tokens (its other limits, Internal's, never get in the way)."""
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, plan=internal_plan, monthly_token_budget=1_000)
    return acme


def test_month_cap_still_refuses_at_the_right_point_after_redis_is_flushed_mid_month(real_redis, redis_server,
                                                                                    budgeted, issue_key):
    served = Served(redis_server, real_redis, issue_key(budgeted))
    served.serve(prompt=200, completion=50, reserve=300, at=NOW - 2 * 86_400)  # earlier this month
    served.serve(prompt=250, completion=50, reserve=300, at=NOW - 3_600)
    tenant_scope = f"t:{budgeted.pk}"
    assert _usage(real_redis, tenant_scope)["month_tokens"] == 550

    real_redis.flushall()  # Redis restarts empty, mid-month
    # A request arrives before the rebuild: Redis counts it from zero.
    served.serve(prompt=80, completion=20, reserve=100, at=NOW - 60)
    assert _usage(real_redis, tenant_scope)["month_tokens"] == 100

    assert rebuild_limit_counters(now=NOW) == 1  # the beat job: the month's marker is missing
    assert _usage(real_redis, tenant_scope)["month_tokens"] == 650  # the database's 550 + Redis's 100, once
    assert real_redis.exists(counters_marker_key("202611"))
    assert rebuild_limit_counters(now=NOW) is None  # marked whole: nothing to do

    served.admit(reserve=350)  # exactly up to the budget
    with pytest.raises(GatewayError) as refused:
        served.admit(reserve=1)
    assert refused.value.status == 429 and refused.value.code == "insufficient_quota"
    assert "monthly token budget (1,000 tokens)" in refused.value.message


def test_a_second_rebuild_counts_nothing_twice(real_redis, redis_server, budgeted, issue_key):
    served = Served(redis_server, real_redis, issue_key(budgeted))
    served.serve(prompt=300, completion=100, reserve=500, at=NOW - 86_400)
    real_redis.flushall()
    from billing.limit_counters import limit_counters_rebuild

    limit_counters_rebuild(now=NOW)
    real_redis.delete(counters_marker_key("202611"))  # the marker alone goes (say, evicted)
    limit_counters_rebuild(now=NOW)
    assert _usage(real_redis, f"t:{budgeted.pk}")["month_tokens"] == 400


def test_day_and_key_counters_are_rebuilt_too(real_redis, redis_server, budgeted, issue_key):
    plaintext = issue_key(budgeted, limits={"daily_token_limit": 500, "monthly_token_budget": 900})
    served = Served(redis_server, real_redis, plaintext)
    served.serve(prompt=300, completion=100, reserve=400, at=NOW - 86_400)  # yesterday
    served.serve(prompt=150, completion=50, reserve=200, at=NOW - 600)  # today
    real_redis.flushall()
    assert rebuild_limit_counters(now=NOW) == 2  # the organisation and the key with limits of its own
    key_usage = _usage(real_redis, f"k:{served.key_id}")
    assert (key_usage["day_tokens"], key_usage["month_tokens"]) == (200, 600)
    tenant_usage = _usage(real_redis, f"t:{budgeted.pk}")
    assert (tenant_usage["day_tokens"], tenant_usage["month_tokens"]) == (200, 600)
    served.admit(reserve=300)  # the key's day: 200 + 300 = its 500
    with pytest.raises(GatewayError) as refused:
        served.admit(reserve=1)
    assert "daily token budget (500 tokens)" in refused.value.message


def test_a_request_admitted_before_the_loss_and_settled_after_it_subtracts_nothing(real_redis, redis_server,
                                                                                  budgeted, issue_key):
    served = Served(redis_server, real_redis, issue_key(budgeted))
    served.serve(prompt=150, completion=50, reserve=200, at=NOW - 3_600)
    running = served.admit(reserve=500, at=NOW - 30)  # still generating when Redis loses its data
    real_redis.flushall()
    rebuild_limit_counters(now=NOW)
    assert _usage(real_redis, f"t:{budgeted.pk}")["month_tokens"] == 200
    # It ends: its reservation was never in the rebuilt counter, so the refund of the unused part is not taken
    # off what others used.
    served.settle(running, prompt=50, completion=50)
    assert _usage(real_redis, f"t:{budgeted.pk}")["month_tokens"] == 200


@pytest.fixture
def celery_with_workers(settings):
    """Celery as in production: tasks go to a Redis broker for a worker. The suite's own Redis when it has one;
    embedded, a private redis-server (the in-memory broker has no worker, so the data plane sends it nothing)."""
    from portal.celery import app
    from tests.services import private_redis

    eager, broker = app.conf.task_always_eager, app.conf.broker_url
    with contextlib.ExitStack() as stack:
        if not settings.REDIS_URL:
            server = stack.enter_context(private_redis())
            settings.CELERY_BROKER_URL = app.conf.broker_url = server.url
        settings.CELERY_TASK_ALWAYS_EAGER = app.conf.task_always_eager = False
        yield app
    app.conf.task_always_eager, app.conf.broker_url = eager, broker


def test_a_limiter_starting_without_the_marker_asks_the_control_plane_for_a_rebuild(celery_with_workers):
    from core.redis import get_redis, key, new_async_redis

    app = celery_with_workers

    async def start_and_stop() -> bool:
        client = new_async_redis()
        limiter = Limiter(client, clock=lambda: NOW)
        await limiter.start()
        checked = await limiter.counters_checked
        await limiter.stop()
        await client.aclose()
        return checked

    import asyncio

    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(app.conf.task_default_queue)
        queue.clear()
        assert asyncio.run(start_and_stop()) is False
        message = queue.get(timeout=2)
        assert message.headers["task"] == COUNTERS_REBUILD_TASK
        message.ack()
        get_redis().set(key("limits", "rebuilt", "202611"), "1")
        assert asyncio.run(start_and_stop()) is True  # the counters are whole: nothing asked
        with pytest.raises(queue.Empty):  # (Redis drops an emptied queue, so its size can't be asked)
            queue.get(timeout=0.5)
        queue.close()


@pytest.mark.django_db(transaction=True)
def test_the_rebuild_runs_every_few_seconds_under_beat_and_in_the_embedded_web_process(acme, settings):
    from core.redis import get_redis, key
    from portal.lifespan import redis_repair_loop

    schedule = settings.CELERY_BEAT_SCHEDULE
    [entry] = [e for e in schedule.values() if e["task"] == COUNTERS_REBUILD_TASK]
    assert entry["schedule"] <= 10
    import threading

    stop = threading.Event()
    stop.set()  # one round of the jobs, then the loop ends
    # In its own thread, as the web process runs it (the loop closes its thread's database connections).
    loop = threading.Thread(target=redis_repair_loop, kwargs={"stop": stop, "interval": 0.01})
    loop.start()
    loop.join(timeout=30)
    month = datetime.now(SYDNEY).strftime("%Y%m")
    assert get_redis().exists(key("limits", "rebuilt", month))
