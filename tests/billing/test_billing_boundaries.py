"""Who pays for the usage of an hour that a subscription starts in, or that a billing period ends in: exactly the
period that holds each request. Stripe's periods start and end at any second; the meter reports split such an hour
at the boundary, and the billing page, the API and the reconciliation count each period to the second. Driven
through the Stripe stand-in, with its clock set to the moments that matter."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from billing.billing_reads import billing_overview
from billing.meters import meter_jobs
from billing.models import Invoice, MeterReport, StripeMeter, Subscription, UsageEvent
from billing.reconciliation import _month_before, tenant_reconciliation
from tests.billing.metering_setup import add_event, hour_floor
from tests.billing.stripe_helpers import MODEL, deliver_new, paid_plan, subscribe

pytestmark = pytest.mark.django_db


def at(fake, moment: datetime) -> None:
    """Set the stand-in's clock (its subscriptions, invoices and meter-event checks follow it)."""
    fake.state.clock = lambda: moment.timestamp()


def tokens_between(tenant, start: datetime, end: datetime) -> dict[str, int]:
    """Straight from the usage events: what Stripe must hold for ``[start, end)``, per direction."""
    events = UsageEvent.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
    return {"input": sum(e.prompt_tokens for e in events), "output": sum(e.completion_tokens for e in events)}


def stripe_holds(fake, customer_id: str, start: datetime, end: datetime) -> dict[str, int]:
    """What the stand-in bills for ``[start, end)``: its meter events by timestamp, per direction."""
    meters = {m.direction: m.stripe_meter_id for m in StripeMeter.objects.filter(model=MODEL)}
    return {direction: fake.state.usage(meter_id, customer_id, int(start.timestamp()), int(end.timestamp()))
            for direction, meter_id in meters.items()}


def test_subscribing_at_37_past_bills_the_usage_after_it_and_not_the_trials_before(
        owner_client, api_client, acme, management_key, stripe_fake):
    plan = paid_plan()
    hour = hour_floor(timezone.now()) - timedelta(hours=3)
    started = hour + timedelta(minutes=37, seconds=12)
    at(stripe_fake, started)
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    assert subscription.started_at == started == subscription.current_period_start
    stripe_fake.state.clock = time.time
    add_event(acme, hour + timedelta(minutes=20), model=MODEL, prompt=2_000, completion=200)  # on the Trial plan
    add_event(acme, hour + timedelta(minutes=40), model=MODEL, prompt=4_000, completion=400)

    meter_jobs()
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()
    # One report per meter for that hour, holding exactly the 40-past tokens, stamped when the subscription started.
    assert sorted((r.span_start, r.quantity) for r in MeterReport.objects.filter(tenant=acme)) == [
        (started, 400), (started, 4_000)]
    held = sorted((e["timestamp"], e["_value"]) for e in stripe_fake.state.meter_events)
    assert held == [(int(started.timestamp()), 400), (int(started.timestamp()), 4_000)]
    period_end = subscription.current_period_end
    assert stripe_holds(stripe_fake, subscription.stripe_customer_id, started, period_end) == {
        "input": 4_000, "output": 400}

    # The billing page and the API count the same: the hour the subscription started in, from its start.
    overview = billing_overview(tenant=acme)
    assert (overview.usage.totals.prompt_tokens, overview.usage.totals.completion_tokens) == (4_000, 400)
    assert overview.usage.totals.requests == 1
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    assert "4,400" in page and "2,200" not in page
    body = api_client.get("/api/v1/billing", HTTP_AUTHORIZATION=f"Bearer {management_key(acme, write=False)}").json()
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (4_000, 400)

    report = tenant_reconciliation(tenant=acme)
    [large_in] = [line for line in report.periods[0].lines if line.meter.direction == "input"]
    assert (large_in.ours, large_in.due, large_in.reported, large_in.stripe) == (4_000, 4_000, 4_000, 4_000)
    assert not report.flagged


def test_a_renewal_inside_an_hour_splits_its_usage_between_the_two_periods(client, owner_client, acme,
                                                                           stripe_fake, settings):
    settings.BILLING_METER_SETTLE_S = 300
    plan = paid_plan()
    hour = hour_floor(timezone.now()) - timedelta(hours=3)
    renewal = hour + timedelta(minutes=37, seconds=12)
    started = _month_before(renewal)  # a monthly period ends at the same second a month on
    at(stripe_fake, started)
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    assert subscription.current_period_end == renewal
    customer = subscription.stripe_customer_id
    for when, prompt in ((started - timedelta(minutes=10), 1), (started + timedelta(minutes=1), 10),
                         (started + timedelta(days=3), 100), (hour + timedelta(minutes=10), 1_000),
                         (renewal - timedelta(seconds=1), 10_000),  # the old period's last second
                         (renewal, 100_000), (hour + timedelta(minutes=50), 1_000_000),
                         (hour + timedelta(hours=1, minutes=5), 10_000_000)):
        add_event(acme, when, model=MODEL, prompt=prompt, completion=prompt // 10)

    # Five minutes after the renewal the part of its hour before it is closed and reported, in time for the
    # invoice Stripe makes for the period that ended.
    at(stripe_fake, renewal - timedelta(seconds=1))
    meter_jobs(now=renewal + timedelta(minutes=5))
    stripe_fake.advance(subscription.stripe_subscription_id)  # the period ends: invoiced
    deliver_new(client, stripe_fake, 0)
    subscription.refresh_from_db()
    assert subscription.current_period_start == renewal
    stripe_fake.state.clock = time.time
    meter_jobs()
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()

    # The renewal's hour went out in two parts, each stamped at its start.
    parts = MeterReport.objects.filter(tenant=acme, hour=hour, meter__endswith="_input")
    assert sorted((r.span_start, r.quantity) for r in parts) == [(hour, 11_000), (renewal, 1_100_000)]
    # Stripe holds, per period, exactly what our usage events hold, and invoiced the old period's in full.
    new_end = subscription.current_period_end
    for start, end in ((started, renewal), (renewal, new_end)):
        assert stripe_holds(stripe_fake, customer, start, end) == tokens_between(acme, start, end), (start, end)
    assert tokens_between(acme, started, renewal) == {"input": 11_110, "output": 1_111}
    invoice = Invoice.objects.get(tenant=acme, period_end=renewal)
    invoiced = {line["meter"]: line["quantity"] for line in invoice.lines if line.get("meter")}
    meters = {m.direction: m.stripe_meter_id for m in StripeMeter.objects.filter(model=MODEL)}
    assert {d: invoiced[meter_id] for d, meter_id in meters.items()} == {"input": 11_110, "output": 1_111}

    # The billing page's period is the new one, to the second.
    totals = billing_overview(tenant=acme).usage.totals
    assert (totals.prompt_tokens, totals.completion_tokens) == (11_100_000, 1_110_000)

    report = tenant_reconciliation(tenant=acme)
    assert [(p.label, p.start, p.end) for p in report.periods] == [
        ("Current period", renewal, new_end), ("Previous period", started, renewal)]
    for period, expected in zip(report.periods, (11_100_000, 11_110), strict=True):
        [line] = [line for line in period.lines if line.meter.direction == "input"]
        assert (line.ours, line.due, line.reported, line.stripe) == (expected,) * 4, period.label
    assert report.periods[1].lines[0].invoiced is not None
    assert not report.flagged, [(p.label, [line.flags for line in p.lines]) for p in report.periods]


def test_the_subscriptions_start_comes_from_stripe(owner_client, acme, stripe_fake):
    started = hour_floor(timezone.now()) - timedelta(minutes=23, seconds=5)
    at(stripe_fake, started)
    subscription = subscribe(owner_client, acme, paid_plan(), stripe_fake)
    assert Subscription.objects.get(pk=subscription.pk).started_at == started
