"""The Stripe meter outbox: one report per (tenant, meter, closed hour) with a stable identifier, corrections for
late usage, sending until Stripe acknowledges (through 500s and timeouts), never twice; at the end Stripe holds
exactly the tokens our usage events hold."""

from __future__ import annotations

import logging
import random
from collections import Counter
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import meters
from billing.meters import identifier_for, meter_jobs, meter_reports_plan, meter_reports_send, retry_delay
from billing.models import MeterReport, UsageEvent
from billing.rollups import rollups_update
from tests.billing.metering_setup import (
    LARGE,
    MODELS,
    SMALL,
    add_event,
    expected_tokens,
    hour_floor,
    metered_plan,
    subscribe,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

METER_EVENTS = "/v1/billing/meter_events"


def plan_after(now):
    rollups_update()
    return meter_reports_plan(now=now)


# --- the meter-reporting test of issue #11 ----------------------------------------------------------------------
def test_after_failures_retries_and_a_late_event_stripe_holds_exactly_our_tokens(acme, bluegum, stripe_fake,
                                                                                  settings):
    settings.STRIPE_TIMEOUT_S = 0.5  # the stand-in hangs one request for 2 s: past the client's timeout
    settings.STRIPE_MAX_RETRIES = 0  # the outbox retries, not the SDK: every failure reaches our backoff
    metered = metered_plan(with_stripe=True)
    now = timezone.now()
    first = hour_floor(now) - timedelta(hours=6)
    subscriptions = {t.pk: subscribe(t, metered.plan, since=first - timedelta(days=2), with_stripe=True)
                     for t in (acme, bluegum)}
    rng = random.Random(11)
    for tenant in (acme, bluegum):
        for hour in range(4):
            for _ in range(rng.randint(1, 6)):
                add_event(tenant, first + timedelta(hours=hour, seconds=rng.randint(0, 3599)),
                          model=rng.choice(MODELS), key_id=rng.choice(["keyaaaaaaaaa", "keybbbbbbbbb"]),
                          prompt=rng.randint(0, 3000), completion=rng.randint(0, 900),
                          status=rng.choice([200, 200, 200, 429]))
    stripe_fake.fail_next(METER_EVENTS, count=3, status=500)
    stripe_fake.hang_next(METER_EVENTS, count=1, seconds=2.0, then="process")  # Stripe keeps it; the answer is lost

    clock = now
    for _ in range(12):  # each run an hour later: every backoff has run out by then
        meter_jobs(now=clock)
        if not MeterReport.objects.filter(sent_at__isnull=True).exists():
            break
        clock += timedelta(hours=1, minutes=1)
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()
    assert MeterReport.objects.filter(attempts__gt=1).count() >= 4  # the three 500s and the timeout were retried

    # A late event for an hour already reported: a correcting report with the difference.
    late = add_event(acme, first + timedelta(hours=1, minutes=59), model=LARGE, prompt=321, completion=123)
    meter_jobs(now=clock)
    corrections = MeterReport.objects.filter(tenant=acme, hour=hour_floor(late.created_at), sequence=1)
    assert {(r.meter, r.quantity) for r in corrections} == {
        (metered.meter(LARGE, "input").event_name, 321), (metered.meter(LARGE, "output").event_name, 123)}
    assert all(r.sent_at for r in corrections)

    def delivered() -> Counter:
        return Counter(r["params"].get("identifier") for r in stripe_fake.requests if r["path"] == METER_EVENTS)

    # The hung request is carried out 2 s late, after its retry had already been taken: the same identifier
    # reached Stripe twice, and Stripe kept one.
    wait_for(lambda: max(delivered().values()) >= 2, timeout=10)
    expected = expected_tokens(UsageEvent.objects.all(), subscriptions, metered.meters)
    assert stripe_fake.meter_totals() == expected
    held = [e["identifier"] for e in stripe_fake.state.meter_events]
    assert not [i for i, n in Counter(held).items() if n > 1]  # no identifier accepted twice
    assert set(held) == set(MeterReport.objects.values_list("identifier", flat=True))
    assert not stripe_fake.state.meter_event_errors

    # Stripe's own summaries (what the reconciliation page reads) agree, per tenant, meter and hour.
    from billing import stripe_gateway

    start = int(first.timestamp())
    for subscription in subscriptions.values():
        for meter in metered.meters.values():
            summaries = stripe_gateway.meter_event_summaries(
                meter_id=meter.stripe_meter_id, customer_id=subscription.stripe_customer_id, start=start,
                end=start + 4 * 3600)
            by_hour = {s: int(v) for s, _e, v in summaries if v}
            assert by_hour == {h: n for (c, m, h), n in expected.items()
                               if c == subscription.stripe_customer_id and m == meter.event_name}, meter


# --- planning ---------------------------------------------------------------------------------------------------
@pytest.fixture
def metered(db):
    return metered_plan(with_stripe=False)


def test_one_report_per_tenant_meter_and_closed_hour_with_the_hours_tokens(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    add_event(acme, hour + timedelta(minutes=1), model=LARGE, prompt=100, completion=10, key_id="keyaaaaaaaaa")
    add_event(acme, hour + timedelta(minutes=59), model=LARGE, prompt=50, completion=5, key_id="keybbbbbbbbb")
    add_event(acme, hour + timedelta(minutes=30), model=SMALL, prompt=7, completion=0)
    rows = plan_after(now)
    assert {(r.meter, r.hour, r.sequence, r.quantity) for r in rows} == {
        (metered.meter(LARGE, "input").event_name, hour, 0, 150),
        (metered.meter(LARGE, "output").event_name, hour, 0, 15),
        (metered.meter(SMALL, "input").event_name, hour, 0, 7),  # no output tokens: no row
    }
    assert plan_after(now) == []  # planning again writes nothing


def test_the_identifier_is_stable_and_at_most_100_characters(acme, metered):
    hour = hour_floor(timezone.now()) - timedelta(hours=2)
    event_name = metered.meter(LARGE, "input").event_name
    identifier = identifier_for(tenant_id=acme.pk, meter=event_name, hour=hour, sequence=3)
    assert identifier == identifier_for(tenant_id=acme.pk, meter=event_name, hour=hour, sequence=3)
    assert identifier.startswith(f"wtl-{acme.pk}-") and identifier.endswith(f"-{hour:%Y%m%d%H}-3")
    assert len(identifier) <= 100
    other = identifier_for(tenant_id=acme.pk, meter=metered.meter(LARGE, "output").event_name, hour=hour, sequence=3)
    assert other != identifier
    assert identifier_for(tenant_id=acme.pk, meter="short", hour=hour, sequence=0) == \
        f"wtl-{acme.pk}-short-{hour:%Y%m%d%H}-0"


def test_an_hour_is_reported_only_once_it_has_settled(acme, metered, settings):
    settings.BILLING_METER_SETTLE_S = 300
    hour = hour_floor(timezone.now()) - timedelta(hours=5)
    subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    add_event(acme, hour + timedelta(minutes=10))
    assert plan_after(hour + timedelta(minutes=64)) == []  # ended 4 minutes ago
    assert len(plan_after(hour + timedelta(minutes=65))) == 2


def test_a_late_event_gets_a_correcting_report_with_the_difference(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    add_event(acme, hour, prompt=100, completion=10)
    assert len(plan_after(now)) == 2
    add_event(acme, hour + timedelta(minutes=20), prompt=5, completion=0)  # arrives after the hour was reported
    add_event(acme, hour + timedelta(hours=1), prompt=1, completion=1)  # a later hour, closed by now too
    rows = plan_after(now + timedelta(minutes=1))
    assert {(r.hour, r.meter, r.sequence, r.quantity) for r in rows} == {
        (hour, metered.meter(LARGE, "input").event_name, 1, 5),
        (hour + timedelta(hours=1), metered.meter(LARGE, "input").event_name, 0, 1),
        (hour + timedelta(hours=1), metered.meter(LARGE, "output").event_name, 0, 1),
    }
    totals = {(m, s): q for m, s, q in MeterReport.objects.filter(hour=hour).values_list("meter", "sequence",
                                                                                         "quantity")}
    assert totals == {(metered.meter(LARGE, "input").event_name, 0): 100,
                      (metered.meter(LARGE, "input").event_name, 1): 5,
                      (metered.meter(LARGE, "output").event_name, 0): 10}


def test_the_hour_a_subscription_starts_in_is_reported_from_the_start_on(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    started = hour + timedelta(minutes=37, seconds=12)
    subscribe(acme, metered.plan, since=started, started_at=started, with_stripe=False)
    add_event(acme, started - timedelta(hours=1), prompt=1, completion=1)  # on the free plan: never billed
    add_event(acme, hour + timedelta(minutes=20), prompt=20, completion=2)  # that hour, before it started
    add_event(acme, hour + timedelta(minutes=40), prompt=40, completion=4)  # after: billed
    add_event(acme, hour + timedelta(hours=1, minutes=5), prompt=65, completion=6)  # the next hour, whole
    rows = plan_after(now)
    large_in = metered.meter(LARGE, "input").event_name
    assert {(r.meter, r.hour, r.span_start, r.quantity) for r in rows} == {
        (large_in, hour, started, 40), (metered.meter(LARGE, "output").event_name, hour, started, 4),
        (large_in, hour + timedelta(hours=1), hour + timedelta(hours=1), 65),
        (metered.meter(LARGE, "output").event_name, hour + timedelta(hours=1), hour + timedelta(hours=1), 6),
    }
    part = next(r for r in rows if r.meter == large_in and r.hour == hour)
    assert part.identifier == identifier_for(tenant_id=acme.pk, meter=large_in, hour=hour, sequence=0, part=started)
    assert part.identifier.endswith(f"-{started:%Y%m%d%H%M%S}-0")
    assert plan_after(now + timedelta(minutes=1)) == []


def test_without_a_known_start_the_current_period_start_is_used_to_the_second(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    since = hour + timedelta(minutes=20)
    subscribe(acme, metered.plan, since=since, with_stripe=False)  # a row from before ``started_at`` was kept
    add_event(acme, hour + timedelta(minutes=10), prompt=10, completion=0)
    add_event(acme, hour + timedelta(minutes=30), prompt=30, completion=0)
    [row] = plan_after(now)
    assert (row.span_start, row.quantity) == (since, 30)


def test_an_hour_holding_a_renewal_is_reported_in_two_parts_each_at_its_start(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    renewal = hour + timedelta(minutes=37, seconds=12)
    subscribe(acme, metered.plan, since=renewal, started_at=renewal - timedelta(days=30), with_stripe=False)
    add_event(acme, hour + timedelta(minutes=10), prompt=100, completion=10)
    add_event(acme, renewal - timedelta(seconds=1), prompt=1, completion=0)
    add_event(acme, renewal, prompt=1000, completion=0)  # the new period's first second
    add_event(acme, hour + timedelta(minutes=50), prompt=500, completion=50)
    rows = plan_after(now)
    large_in, large_out = metered.meter(LARGE, "input").event_name, metered.meter(LARGE, "output").event_name
    assert {(r.meter, r.span_start, r.quantity) for r in rows} == {
        (large_in, hour, 101), (large_out, hour, 10), (large_in, renewal, 1500), (large_out, renewal, 50)}
    assert {r.hour for r in rows} == {hour}
    identifiers = {r.identifier for r in rows}
    assert len(identifiers) == 4
    assert identifier_for(tenant_id=acme.pk, meter=large_in, hour=hour, sequence=0, part=hour) in identifiers
    assert identifier_for(tenant_id=acme.pk, meter=large_in, hour=hour, sequence=0) not in identifiers


def test_a_late_event_in_a_part_gets_a_correction_for_that_part(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    renewal = hour + timedelta(minutes=37, seconds=12)
    subscribe(acme, metered.plan, since=renewal, started_at=renewal - timedelta(days=30), with_stripe=False)
    add_event(acme, hour + timedelta(minutes=10), prompt=100, completion=0)
    add_event(acme, hour + timedelta(minutes=50), prompt=500, completion=0)
    assert len(plan_after(now)) == 2
    add_event(acme, hour + timedelta(minutes=45), prompt=7, completion=0)  # after the renewal, late
    [row] = plan_after(now + timedelta(minutes=1))
    assert (row.span_start, row.sequence, row.quantity) == (renewal, 1, 7)
    assert row.identifier.endswith(f"-{renewal:%Y%m%d%H%M%S}-1")
    add_event(acme, hour + timedelta(minutes=5), prompt=3, completion=0)  # before it, late
    [row] = plan_after(now + timedelta(minutes=2))
    assert (row.span_start, row.sequence, row.quantity) == (hour, 1, 3)
    by_span = {s: q for s, q in MeterReport.objects.values_list("span_start").annotate(q=Sum("quantity"))}
    assert by_span == {hour: 103, renewal: 507}


def test_the_part_before_a_boundary_is_reported_once_the_boundary_has_passed(acme, metered, settings):
    settings.BILLING_METER_SETTLE_S = 300
    hour = hour_floor(timezone.now()) - timedelta(hours=3)
    renewal = hour + timedelta(minutes=20)
    subscribe(acme, metered.plan, since=renewal - timedelta(days=30), period_end=renewal,
              started_at=renewal - timedelta(days=30), with_stripe=False)
    add_event(acme, hour + timedelta(minutes=5), prompt=5, completion=0)
    add_event(acme, hour + timedelta(minutes=40), prompt=40, completion=0)
    assert plan_after(renewal + timedelta(minutes=4)) == []  # the part ended 4 minutes ago
    [row] = plan_after(renewal + timedelta(minutes=5))  # Stripe finalises that period's invoice within the hour
    assert (row.span_start, row.quantity) == (hour, 5)
    assert plan_after(hour + timedelta(minutes=64)) == []
    [row] = plan_after(hour + timedelta(minutes=65))
    assert (row.span_start, row.quantity) == (renewal, 40)


def test_an_hour_reported_whole_before_a_boundary_was_known_is_not_counted_twice(acme, metered, caplog):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    subscription = subscribe(acme, metered.plan, since=hour - timedelta(days=3), started_at=hour - timedelta(days=3),
                             with_stripe=False)
    add_event(acme, hour + timedelta(minutes=10), prompt=100, completion=0)
    add_event(acme, hour + timedelta(minutes=50), prompt=500, completion=0)
    [whole] = plan_after(now)
    assert (whole.span_start, whole.quantity) == (hour, 600)
    # Stripe moves the period to start inside that hour (a billing cycle reset), and a late event arrives there.
    subscription.current_period_start = hour + timedelta(minutes=30)
    subscription.save()
    add_event(acme, hour + timedelta(minutes=55), prompt=9, completion=0)
    with caplog.at_level(logging.WARNING, logger="wattle.meters"):
        [row] = plan_after(now + timedelta(minutes=1))
    assert (row.span_start, row.quantity) == (hour + timedelta(minutes=30), 9)  # only what is new
    assert MeterReport.objects.aggregate(n=Sum("quantity"))["n"] == 609
    assert "before a boundary inside its hour was known" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("change", ["no customer", "cancelled", "not metered"])
def test_tenants_without_a_running_metered_subscription_are_not_reported(acme, metered, change):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=2)
    subscription = subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    if change == "no customer":
        subscription.stripe_customer_id = ""
    elif change == "cancelled":
        # Ended before the usage (its usage up to the end is reported: tests/billing/test_attack_billing.py).
        subscription.status = "canceled"
        subscription.current_period_end = hour - timedelta(minutes=1)
    else:
        metered.plan.stripe_prices.exclude(kind="fee").delete()
    subscription.save()
    add_event(acme, hour)
    assert plan_after(now) == []


def test_a_subscription_recorded_after_its_hours_closed_still_gets_them_reported(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=4)
    add_event(acme, hour + timedelta(minutes=5))
    assert plan_after(now) == []  # not subscribed yet, as far as we know: the checkout webhook is late
    subscribe(acme, metered.plan, since=hour - timedelta(hours=1), with_stripe=False)
    rows = plan_after(now + timedelta(minutes=1))
    assert {r.hour for r in rows} == {hour} and len(rows) == 2


# --- sending ----------------------------------------------------------------------------------------------------
def planned_rows(acme, metered, now):
    hour = hour_floor(now) - timedelta(hours=2)
    subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    add_event(acme, hour, prompt=10, completion=0)
    [row] = plan_after(now)
    return row


def test_nothing_is_sent_while_payments_are_not_configured(acme, metered, settings):
    settings.STRIPE_SECRET_KEY = ""
    planned_rows(acme, metered, timezone.now())
    assert meter_reports_send().sent == 0
    assert MeterReport.objects.get().attempts == 0


def test_stripe_unavailable_backs_off_exponentially(acme, metered, settings, monkeypatch):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    settings.BILLING_METER_RETRY_BASE_S, settings.BILLING_METER_RETRY_MAX_S = 60, 600
    now = timezone.now()
    row = planned_rows(acme, metered, now)
    calls = []

    def unavailable(**kwargs):
        calls.append(kwargs)
        raise meters.stripe_gateway.StripeUnavailable("Stripe meter event create: APIConnectionError")

    monkeypatch.setattr(meters.stripe_gateway, "meter_event_create", unavailable)
    delays = []
    for _ in range(6):
        row.refresh_from_db()
        meter_reports_send(now=row.next_attempt_at)
        before = row.next_attempt_at
        row.refresh_from_db()
        delays.append((row.next_attempt_at - before).total_seconds())
    assert delays == [60, 120, 240, 480, 600, 600]
    assert row.attempts == 6 and row.sent_at is None and "APIConnectionError" in row.last_error
    assert {c["identifier"] for c in calls} == {row.identifier}  # every retry carries the same identifier
    assert calls[0]["timestamp"] == int(row.span_start.timestamp()) and calls[0]["value"] == 10
    assert retry_delay(1) == timedelta(seconds=60)


def test_a_refused_report_is_marked_and_not_sent_again(acme, metered, stripe_fake, caplog):
    row = planned_rows(acme, metered, timezone.now())
    stripe_fake.fail_next(METER_EVENTS, count=1, status=400)
    with caplog.at_level(logging.ERROR, logger="wattle.meters"):
        result = meter_reports_send(now=timezone.now())
    assert (result.sent, result.refused) == (0, 1)
    row.refresh_from_db()
    assert row.refused and row.sent_at is None and row.last_error
    assert row.identifier in caplog.text
    assert meter_reports_send(now=timezone.now() + timedelta(days=1)).refused == 0  # never picked up again


def test_a_report_older_than_stripes_35_days_is_refused_without_calling_stripe(acme, metered, settings,
                                                                                monkeypatch):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    now = timezone.now()
    row = planned_rows(acme, metered, now)
    monkeypatch.setattr(meters.stripe_gateway, "meter_event_create", pytest.fail)
    assert meter_reports_send(now=now + timedelta(days=36)).refused == 1
    row.refresh_from_db()
    assert row.refused and "35 days" in row.last_error


def test_a_claimed_report_is_not_claimed_again_while_it_is_being_sent(acme, metered, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    row = planned_rows(acme, metered, timezone.now())
    now = timezone.now()
    claimed = meters._claim(now)
    assert claimed.pk == row.pk and claimed.attempts == 1
    assert meters._claim(now) is None  # a second sender finds nothing to send
    assert meters._claim(now + timedelta(seconds=59)) is None
    # A sender that died mid-send gives the row back when its lease runs out; Stripe drops a second delivery.
    assert meters._claim(now + meters._lease() + timedelta(seconds=1)).pk == row.pk


# --- when the jobs run ------------------------------------------------------------------------------------------
def test_the_jobs_run_every_minute_on_beat(settings):
    schedule = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for task in ("build_rollups", "plan_meter_reports", "send_meter_reports"):
        assert schedule[f"billing.tasks.{task}"] == 60.0


def test_the_tasks_build_rollups_and_plan_reports(acme, metered):
    from billing import tasks

    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=2)
    subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    add_event(acme, hour)
    assert tasks.build_rollups() == 1
    assert tasks.plan_meter_reports() == 2
    assert MeterReport.objects.count() == 2


def test_the_embedded_loop_runs_the_jobs_until_told_to_stop(monkeypatch):
    import threading

    from portal.lifespan import billing_jobs_loop

    stop, runs = threading.Event(), []

    def jobs():
        runs.append(1)
        if len(runs) == 2:
            stop.set()
        raise RuntimeError("a failing run is logged; the loop carries on")

    monkeypatch.setattr(meters, "meter_jobs", jobs)
    billing_jobs_loop(stop=stop, interval=0.01)
    assert runs == [1, 1]


def test_a_meter_created_after_its_models_hours_closed_gets_them_reported(acme, metered):
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=4)
    subscribe(acme, metered.plan, since=hour - timedelta(days=1), with_stripe=False)
    add_event(acme, hour, model="mistralai/Codestral-22B", prompt=9, completion=0)
    assert plan_after(now) == []  # no meter for that model yet
    from billing.models import StripeMeter

    StripeMeter.objects.create(model="mistralai/Codestral-22B", direction="input", event_name="codestral_in",
                               stripe_meter_id="mtr_codestral_in")  # the plan sync added the model later
    [row] = plan_after(now + timedelta(minutes=1))
    assert (row.meter, row.hour, row.quantity) == ("codestral_in", hour, 9)
