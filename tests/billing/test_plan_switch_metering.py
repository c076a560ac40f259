"""A plan switch is a boundary of the meter reports: the usage before it reaches Stripe before the old plan's
metered prices leave the subscription (so Stripe bills it at them), the rest of the switch hour is stamped at the
switch (where the new prices bill it), and nothing is lost or billed twice. If Stripe can't take the usage before
the switch, the switch is refused and nothing changes. Driven through the Stripe stand-in with its clock set to
the switch, as in test_billing_boundaries."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from billing.meters import meter_jobs
from billing.models import MeterReport, PlanSwitch, StripePrice, Subscription, TenantQuota, UsageEvent
from billing.subscriptions import BillingUnavailable, subscription_change_plan
from tests.billing.metering_setup import add_event, hour_floor
from tests.billing.stripe_helpers import MODEL, paid_plan, subscribe

pytestmark = pytest.mark.django_db


def at(fake, moment: datetime) -> None:
    fake.state.clock = lambda: moment.timestamp()


@pytest.fixture
def plans(db, stripe_fake):
    return paid_plan(), paid_plan(slug="business", name="Business", fee="499.00")


@pytest.fixture
def hour():
    return hour_floor(timezone.now()) - timedelta(hours=3)


@pytest.fixture
def subscribed(owner_client, acme, plans, stripe_fake, hour):
    at(stripe_fake, hour - timedelta(hours=2))
    return subscribe(owner_client, acme, plans[0], stripe_fake)


def _billed_per_price(fake, invoice_id: str) -> dict[str, int]:
    """The invoice's token quantities per Stripe price: the subscription's metered lines and the usage items a
    removed price left (fee lines and prorations of the fee left out)."""
    metered = set(StripePrice.objects.exclude(kind=StripePrice.Kind.FEE).values_list("stripe_price_id", flat=True))
    billed: dict[str, int] = defaultdict(int)
    with fake.state.lock:
        for line in fake.state.invoice_lines(invoice_id):
            price = line["pricing"]["price_details"]["price"]
            if price in metered:
                billed[price] += line["quantity"]
    return dict(billed)


def _price(plan, kind: str) -> str:
    return StripePrice.objects.get(plan=plan, kind=kind, model=MODEL).stripe_price_id


def test_usage_before_a_switch_is_billed_at_the_old_prices_and_after_it_at_the_new(
        acme, plans, subscribed, stripe_fake, hour):
    developer, business = plans
    earlier = hour - timedelta(hours=1)
    add_event(acme, earlier + timedelta(minutes=20), model=MODEL, prompt=1_000, completion=100)  # never reported
    add_event(acme, hour + timedelta(minutes=10), model=MODEL, prompt=20_000, completion=2_000)
    add_event(acme, hour + timedelta(minutes=50), model=MODEL, prompt=300_000, completion=30_000)
    switch = hour + timedelta(minutes=30)
    at(stripe_fake, switch)
    seen = len(stripe_fake.requests)

    subscription_change_plan(tenant=acme, plan=business, now=switch)

    boundary = switch + timedelta(seconds=1)  # the switch's own second still goes with the old prices
    assert list(PlanSwitch.objects.filter(tenant=acme).values_list("at", flat=True)) == [boundary]
    audit = AuditEntry.objects.get(action="billing.plan.change", tenant=acme)
    assert audit.data["usage_boundary"] == boundary.isoformat()
    # Every span before the switch went out before Stripe's update: the earlier hour whole, the switch hour's part.
    sub_path = f"/v1/subscriptions/{subscribed.stripe_subscription_id}"
    with stripe_fake.state.lock:
        paths = [r["path"] for r in stripe_fake.requests[seen:] if r["method"] == "POST"]
    update = paths.index(sub_path)
    assert paths[:update].count("/v1/billing/meter_events") == 4
    assert "/v1/billing/meter_events" not in paths[update:]
    assert sorted((r.span_start, r.quantity) for r in MeterReport.objects.filter(tenant=acme, meter__endswith="input")
                  ) == [(earlier, 1_000), (hour, 20_000)]
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()

    # Later, the rest of the switch hour closes and is reported, stamped at the switch.
    stripe_fake.state.clock = time.time
    meter_jobs()
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()
    assert sorted((r.span_start, r.quantity) for r in MeterReport.objects.filter(tenant=acme, hour=hour)) == [
        (hour, 2_000), (hour, 20_000), (boundary, 30_000), (boundary, 300_000)]

    invoice = stripe_fake.advance(subscribed.stripe_subscription_id)
    billed = _billed_per_price(stripe_fake, invoice["id"])
    assert billed == {
        _price(developer, "input"): 21_000, _price(developer, "output"): 2_100,
        _price(business, "input"): 300_000, _price(business, "output"): 30_000,
    }
    # Nothing lost, nothing twice: the prices together bill exactly the usage events.
    events = UsageEvent.objects.filter(tenant=acme)
    assert sum(billed.values()) == sum(e.prompt_tokens + e.completion_tokens for e in events)


def test_a_switch_with_everything_reported_sends_only_the_switch_hours_part(acme, plans, subscribed, stripe_fake,
                                                                           hour, settings):
    _developer, business = plans
    settings.BILLING_METER_SETTLE_S = 300
    add_event(acme, hour - timedelta(minutes=30), model=MODEL, prompt=1_000, completion=100)
    add_event(acme, hour + timedelta(minutes=10), model=MODEL, prompt=20_000, completion=2_000)
    at(stripe_fake, hour + timedelta(minutes=12))
    meter_jobs(now=hour + timedelta(minutes=12))  # the hour before: reported as usual
    assert MeterReport.objects.filter(tenant=acme, sent_at__isnull=False).count() == 2
    switch = hour + timedelta(minutes=30)
    at(stripe_fake, switch)
    subscription_change_plan(tenant=acme, plan=business, now=switch)
    # Not sent again; the switch hour's part went out with its own identifier.
    reports = MeterReport.objects.filter(tenant=acme).order_by("span_start", "meter")
    assert [(r.span_start, r.quantity, r.sequence) for r in reports] == [
        (hour - timedelta(hours=1), 1_000, 0), (hour - timedelta(hours=1), 100, 0), (hour, 20_000, 0),
        (hour, 2_000, 0)]
    assert all(r.sent_at for r in reports)
    assert reports[2].identifier.endswith(f"-{hour:%Y%m%d%H%M%S}-0")


def test_stripe_unavailable_for_the_usage_refuses_the_switch_and_changes_nothing(
        owner_client, acme, plans, subscribed, stripe_fake, hour):
    developer, business = plans
    add_event(acme, hour + timedelta(minutes=10), model=MODEL, prompt=20_000, completion=2_000)
    switch = hour + timedelta(minutes=30)
    at(stripe_fake, switch)
    with stripe_fake.state.lock:
        before = {item["price"]["id"] for item in
                  stripe_fake.state.subscriptions[subscribed.stripe_subscription_id]["items"]["data"]}
    stripe_fake.fail_next("/v1/billing/meter_events", count=50, status=500)

    with pytest.raises(BillingUnavailable, match="try again in a minute"):
        subscription_change_plan(tenant=acme, plan=business, now=switch)

    sub_path = f"/v1/subscriptions/{subscribed.stripe_subscription_id}"
    with stripe_fake.state.lock:
        after = {item["price"]["id"] for item in
                 stripe_fake.state.subscriptions[subscribed.stripe_subscription_id]["items"]["data"]}
        updates = [r for r in stripe_fake.requests if r["method"] == "POST" and r["path"] == sub_path]
        items = list(stripe_fake.state.invoice_items.values())
    assert after == before and not updates and not items
    assert not PlanSwitch.objects.exists()
    assert Subscription.objects.get(tenant=acme).plan == developer
    assert TenantQuota.objects.get(tenant=acme).plan == developer
    # The usage waits in the outbox for the regular sender (stamped before the boundary: one period, one plan).
    assert MeterReport.objects.filter(tenant=acme, sent_at__isnull=True).exists()

    # Through the console, the same refusal in words.
    stripe_fake.fail_next("/v1/billing/meter_events", count=50, status=500)
    response = owner_client.post(f"/t/{acme.slug}/billing/change/{business.slug}/", follow=True)
    assert "Please try again in a minute" in response.content.decode().replace("&#x27;", "'")
    assert Subscription.objects.get(tenant=acme).plan == developer
