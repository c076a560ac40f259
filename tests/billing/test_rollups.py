"""Usage rollups: exact against the raw events, incremental, idempotent, late events added to old buckets, days on
the Sydney calendar, nothing skipped when ingest commits out of id order."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing import rollups
from billing.models import ModelPrice, RollupWatermark, UsageEvent, UsageRollup
from billing.services import USAGE_COMMIT_LOCK

pytestmark = pytest.mark.django_db

SYDNEY = ZoneInfo("Australia/Sydney")
LARGE = "mistralai/Mistral-Large-Instruct-2411"
SMALL = "mistralai/Mistral-7B-Instruct-v0.3"
# A Sunday in November: Sydney is on daylight time (UTC+11).
BASE = datetime(2026, 11, 8, 0, 0, tzinfo=UTC)


@pytest.fixture
def prices(db):
    ModelPrice.objects.create(model=LARGE, input_per_1k_aud=Decimal("0.003"), output_per_1k_aud=Decimal("0.009"))
    ModelPrice.objects.create(model=SMALL, input_per_1k_aud=Decimal("0.000215"),
                              output_per_1k_aud=Decimal("0.000655"))


def add_event(tenant, at: datetime, *, key_id: str = "keyaaaaaaaaa", model: str = LARGE, status: int = 200,
              prompt: int = 100, completion: int = 50) -> UsageEvent:
    return UsageEvent.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", tenant=tenant, key_id=key_id, endpoint="chat.completions",
        model=model, status=status, prompt_tokens=prompt, completion_tokens=completion, created_at=at)


def expected_buckets(events) -> dict[tuple, list[int]]:
    """What the rollups should hold, worked out from the raw events independently of billing.rollups: hours by
    truncating UTC time, days by the Sydney date, cost per event from the Decimal prices rounded up."""
    prices = {p.model: p for p in ModelPrice.objects.all()}
    buckets: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for e in events:
        at = e.created_at.astimezone(UTC)
        hour = at.replace(minute=0, second=0, microsecond=0)
        local_day = at.astimezone(SYDNEY).date()
        day = datetime(local_day.year, local_day.month, local_day.day, tzinfo=SYDNEY).astimezone(UTC)
        price = prices.get(e.model)
        cost = 0
        if price is not None:
            aud = (e.prompt_tokens * price.input_per_1k_aud + e.completion_tokens * price.output_per_1k_aud) / 1000
            cost = int((aud * 1_000_000).to_integral_value(rounding=ROUND_CEILING))
        for key in ((e.tenant_id, "h", hour, e.key_id, e.model), (e.tenant_id, "d", day, e.key_id, e.model)):
            acc = buckets[key]
            acc[0] += 1
            acc[1] += e.status >= 400
            acc[2] += e.prompt_tokens
            acc[3] += e.completion_tokens
            acc[4] += cost
    return dict(buckets)


def stored_buckets() -> dict[tuple, list[int]]:
    return {
        (r.tenant_id, r.period, r.start, r.key_id, r.model):
            [r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.cost_micro_aud]
        for r in UsageRollup.objects.all()
    }


def watermark() -> int:
    return RollupWatermark.objects.get(name=rollups.WATERMARK).last_id


# --- exactness ------------------------------------------------------------------------------------------------
_event = st.tuples(
    st.integers(0, 1),  # tenant
    st.integers(0, 3 * 24 * 60 - 1),  # minute within three days (several Sydney midnights)
    st.sampled_from(["", "keyaaaaaaaaa", "keybbbbbbbbb"]),
    st.sampled_from([LARGE, SMALL, "unpriced-model", ""]),
    st.sampled_from([200, 200, 200, 400, 429, 499, 500]),
    st.integers(0, 40_000),
    st.integers(0, 8_000),
)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_event, max_size=25), min_size=1, max_size=4), batch_size=st.integers(1, 30))
def test_rollups_equal_the_raw_events_whatever_the_events_and_however_they_arrive(acme, bluegum, prices, batches,
                                                                                    batch_size):
    UsageEvent.objects.all().delete()
    UsageRollup.objects.all().delete()
    RollupWatermark.objects.all().delete()
    tenants = [acme, bluegum]
    events = []
    for batch in batches:  # events arrive between runs, late ones (older times) included
        for tenant, minute, key_id, model, status, prompt, completion in batch:
            events.append(add_event(tenants[tenant], BASE + timedelta(minutes=minute), key_id=key_id, model=model,
                                    status=status, prompt=prompt, completion=completion))
        while rollups.rollups_build(batch=batch_size):
            pass
        assert stored_buckets() == expected_buckets(events)
    assert rollups.rollups_build() == 0


def test_a_second_run_adds_nothing(acme, prices):
    for minute in range(0, 180, 7):
        add_event(acme, BASE + timedelta(minutes=minute))
    assert rollups.rollups_update() == 26
    before = stored_buckets()
    assert rollups.rollups_update() == 0
    assert stored_buckets() == before
    assert watermark() == UsageEvent.objects.order_by("-id").first().id


def test_a_run_that_fails_counts_nothing_and_the_next_counts_everything_once(acme, prices):
    events = [add_event(acme, BASE + timedelta(minutes=m)) for m in range(5)]
    with mock.patch.object(RollupWatermark, "save", side_effect=RuntimeError("database went away")), \
            pytest.raises(RuntimeError):
        rollups.rollups_update()
    assert not UsageRollup.objects.exists()  # the bucket upserts went with the failed transaction
    rollups.rollups_update()
    assert stored_buckets() == expected_buckets(events)


def test_a_late_event_is_added_to_its_old_hour_and_day(acme, prices):
    add_event(acme, BASE + timedelta(hours=1, minutes=5), prompt=10, completion=1)
    rollups.rollups_update()
    add_event(acme, BASE + timedelta(days=1, hours=3))  # a newer hour
    add_event(acme, BASE + timedelta(hours=1, minutes=40), prompt=7, completion=2)  # late: an hour already rolled up
    rollups.rollups_update()
    hour = UsageRollup.objects.get(tenant=acme, period="h", start=BASE + timedelta(hours=1))
    assert (hour.requests, hour.prompt_tokens, hour.completion_tokens) == (2, 17, 3)
    assert stored_buckets() == expected_buckets(UsageEvent.objects.all())


def test_errors_are_requests_answered_with_status_400_or_more(acme, prices):
    for status in (200, 201, 399, 400, 429, 500):
        add_event(acme, BASE, status=status)
    rollups.rollups_update()
    hour = UsageRollup.objects.get(tenant=acme, period="h")
    assert (hour.requests, hour.errors) == (6, 3)


def test_cost_is_each_request_rounded_up_to_the_micro_dollar_at_the_current_price(acme, prices):
    # 1 input token of the small model costs 0.215 micro-AUD: each request is charged 1 micro-AUD, as the spend
    # cap charged it, not 3 x 0.215 rounded once.
    for _ in range(3):
        add_event(acme, BASE, model=SMALL, prompt=1, completion=0)
    rollups.rollups_update()
    assert UsageRollup.objects.get(tenant=acme, period="h").cost_micro_aud == 3


# --- the Sydney calendar --------------------------------------------------------------------------------------
def test_an_event_at_23_30_utc_lands_in_the_next_sydney_day(acme, prices):
    at = datetime(2026, 11, 10, 23, 30, tzinfo=UTC)  # 10:30 on 11 November in Sydney (AEDT)
    add_event(acme, at)
    rollups.rollups_update()
    day = UsageRollup.objects.get(tenant=acme, period="d")
    assert day.start.astimezone(SYDNEY) == datetime(2026, 11, 11, tzinfo=SYDNEY)
    assert day.start == datetime(2026, 11, 10, 13, 0, tzinfo=UTC)
    assert UsageRollup.objects.get(tenant=acme, period="h").start == datetime(2026, 11, 10, 23, 0, tzinfo=UTC)


def test_days_follow_sydney_daylight_saving(acme, prices):
    # Daylight saving ends at 03:00 AEDT on 5 April 2026 (16:00 UTC on the 4th): that Sydney day has 25 hours.
    first = datetime(2026, 4, 4, 13, 0, tzinfo=UTC)  # 00:00 AEDT on the 5th
    last = datetime(2026, 4, 5, 13, 59, tzinfo=UTC)  # 23:59 AEST on the 5th
    add_event(acme, first)
    add_event(acme, last)
    add_event(acme, datetime(2026, 4, 5, 14, 0, tzinfo=UTC))  # 00:00 AEST on the 6th
    rollups.rollups_update()
    days = {r.start.astimezone(SYDNEY).date().isoformat(): r.requests
            for r in UsageRollup.objects.filter(tenant=acme, period="d")}
    assert days == {"2026-04-05": 2, "2026-04-06": 1}


# --- reading by id never skips an event ----------------------------------------------------------------------
def test_committed_max_id_is_the_newest_event_on_sqlite(acme):
    assert rollups.committed_max_id() == 0
    last = add_event(acme, BASE)
    assert rollups.committed_max_id() == last.id


@pytest.mark.skipif(connection.vendor != "postgresql", reason="ids commit out of order only on PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_the_rollup_job_waits_for_an_ingest_transaction_in_flight(acme):
    """An ingest transaction that took its id but has not committed holds the rollup job's read of max(id): once
    the read returns, the event is committed and visible, so the watermark cannot pass it."""
    inserted, release, done = threading.Event(), threading.Event(), threading.Event()
    read: list[int] = []

    def ingest():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [USAGE_COMMIT_LOCK])
                add_event(acme, BASE)
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    def rollup_read():
        try:
            read.append(rollups.committed_max_id())
            done.set()
        finally:
            connection.close()

    writer = threading.Thread(target=ingest)
    writer.start()
    assert inserted.wait(10)
    reader = threading.Thread(target=rollup_read)
    reader.start()
    assert not done.wait(0.5)  # blocked while the insert is uncommitted
    release.set()
    writer.join(10)
    reader.join(10)
    assert read == [UsageEvent.objects.get().id]
    rollups.rollups_update()
    assert UsageRollup.objects.filter(tenant=acme, period="h").get().requests == 1
