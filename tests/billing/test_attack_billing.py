"""Billing seen by someone trying to get GPU time without paying for it, or to make us bill it wrongly: each test
names the abuse and shows it is closed."""

from __future__ import annotations

import html

import pytest

from billing.models import CheckoutSession, Invoice, Subscription
from tests.billing.stripe_helpers import deliver_new, paid_plan, start_checkout, subscribe


def text(response) -> str:
    return html.unescape(response.content.decode())


@pytest.fixture
def ended_unpaid(owner_client, client, acme, stripe_fake):
    """Acme's Developer subscription went past due (card declined) and was then cancelled, its invoice still open."""
    subscription = subscribe(owner_client, acme, paid_plan(), stripe_fake)
    stripe_fake.set_card_declines(subscription.stripe_customer_id)
    mark = len(stripe_fake.events)
    stripe_fake.advance(subscription.stripe_subscription_id)
    mark = deliver_new(client, stripe_fake, mark)
    stripe_fake.cancel(subscription.stripe_subscription_id)
    deliver_new(client, stripe_fake, mark)
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == "canceled"
    assert Invoice.objects.filter(tenant=acme, status="open").exists()
    return subscription


def test_a_subscription_that_ended_unpaid_cannot_be_replaced_by_a_new_checkout(owner_client, acme, stripe_fake,
                                                                                ended_unpaid):
    """Cancel while past due, then subscribe afresh: the new subscription's first invoice would be paid and the
    old period's fee and usage left open for ever. Checkout waits until the open invoice is paid."""
    before = CheckoutSession.objects.filter(tenant=acme).count()
    response, _session = start_checkout(owner_client, acme, ended_unpaid.plan)
    assert response.status_code == 409
    assert "open invoice" in text(response)
    assert CheckoutSession.objects.filter(tenant=acme).count() == before


def test_once_the_open_invoice_is_paid_checkout_opens_again(owner_client, client, acme, stripe_fake, ended_unpaid):
    invoice = Invoice.objects.get(tenant=acme, status="open")
    stripe_fake.set_card_declines(ended_unpaid.stripe_customer_id, False)
    mark = len(stripe_fake.events)
    stripe_fake.pay(invoice.stripe_invoice_id)
    deliver_new(client, stripe_fake, mark)
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    response, _session = start_checkout(owner_client, acme, ended_unpaid.plan)
    assert response.status_code == 303


# --- unbounded inputs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["start=9999-12-30&end=9999-12-31", "start=0001-01-01&end=0001-01-02"])
def test_usage_export_with_days_at_the_calendars_ends_is_a_clear_400(owner_client, acme, query):
    response = owner_client.get(f"/t/{acme.slug}/billing/usage.csv?{query}")
    assert response.status_code == 400
    assert "between" in text(response)


@pytest.mark.parametrize("query", ["since=0001-01-01", "since=0001-01-01&until=0001-01-02", "until=9999-12-31"])
def test_api_usage_with_days_at_the_calendars_ends_is_a_clear_400(owner_client, acme, query):
    response = owner_client.get(f"/api/v1/usage?{query}")
    assert response.status_code == 400


def test_api_usage_since_alone_is_held_to_the_same_366_days(owner_client, acme):
    """``since`` without ``until`` runs to today: years of raw usage events read in one request otherwise."""
    from django.utils import timezone

    since = timezone.localdate().replace(year=timezone.localdate().year - 5)
    response = owner_client.get(f"/api/v1/usage?since={since.isoformat()}")
    assert response.status_code == 400
    assert "366" in response.content.decode()


# --- a cancelled subscription's last hours ----------------------------------------------------------------------
def test_a_cancellation_keeps_when_the_subscription_ended_as_its_periods_end(owner_client, acme, stripe_fake):
    from billing.subscriptions import subscription_refresh

    subscription = subscribe(owner_client, acme, paid_plan(), stripe_fake)
    assert subscription.current_period_end > subscription.current_period_start
    ended = stripe_fake.cancel(subscription.stripe_subscription_id)["ended_at"]
    subscription = subscription_refresh(subscription_id=subscription.stripe_subscription_id)
    assert subscription.status == "canceled"
    assert int(subscription.current_period_end.timestamp()) == ended


def test_usage_up_to_a_cancellation_is_reported_after_the_cancellation_and_nothing_after_it(acme):
    """The webhook saying a subscription ended usually arrives before its last hour has closed (and settled): the
    planner used to drop the tenant at once, so the usage of that last hour (and any late events) never reached
    Stripe. It is reported up to the moment the subscription ended, and usage after it (free plan) is not."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.meters import meter_reports_plan
    from billing.rollups import rollups_update
    from tests.billing.metering_setup import LARGE, add_event, hour_floor, metered_plan
    from tests.billing.metering_setup import subscribe as subscribe_row

    metered = metered_plan(with_stripe=False)
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    ended_at = hour + timedelta(minutes=20)
    row = subscribe_row(acme, metered.plan, since=hour - timedelta(days=10), with_stripe=False,
                        started_at=hour - timedelta(days=10))
    add_event(acme, hour - timedelta(minutes=30), prompt=7, completion=0)  # the hour before: a whole hour
    add_event(acme, hour + timedelta(minutes=10), prompt=100, completion=0)  # before the end: billed
    add_event(acme, hour + timedelta(minutes=40), prompt=5000, completion=0)  # after it, on the free plan
    row.status, row.current_period_end = "canceled", ended_at
    row.save()
    rollups_update()
    rows = meter_reports_plan(now=now)
    event_name = metered.meter(LARGE, "input").event_name
    assert sorted((r.meter, r.span_start, r.quantity) for r in rows) == [
        (event_name, hour - timedelta(hours=1), 7), (event_name, hour, 100)]
    # A late event before the end still gets its correction; one after it still doesn't.
    add_event(acme, hour + timedelta(minutes=19), prompt=3, completion=0)
    add_event(acme, hour + timedelta(minutes=50), prompt=3, completion=0)
    rollups_update()
    rows = meter_reports_plan(now=now + timedelta(minutes=2))
    assert [(r.span_start, r.quantity, r.sequence) for r in rows] == [(hour, 3, 1)]


# --- two Checkouts at once ----------------------------------------------------------------------------------------
def test_a_new_checkout_expires_the_tenants_open_one_so_two_subscriptions_cannot_both_start(owner_client, acme,
                                                                                         stripe_fake):
    """Two tabs, two Checkouts, both paid: two subscriptions to the same meters, so Stripe would bill every token
    (and the fee) twice, while Wattle follows only one of them. Starting a Checkout expires the one left open."""
    plan = paid_plan()
    _response, first = start_checkout(owner_client, acme, plan)
    _response, second = start_checkout(owner_client, acme, plan)
    with stripe_fake.state.lock:
        assert stripe_fake.state.checkout_sessions[first.stripe_session_id]["status"] == "expired"
        assert stripe_fake.state.checkout_sessions[second.stripe_session_id]["status"] == "open"
    assert CheckoutSession.objects.get(pk=first.pk).status == CheckoutSession.Status.EXPIRED
    with pytest.raises(Exception, match="expired"):
        stripe_fake.complete_checkout(first.stripe_session_id)
    stripe_fake.complete_checkout(second.stripe_session_id)
    with stripe_fake.state.lock:
        assert len(stripe_fake.state.subscriptions) == 1


def test_a_checkout_completed_in_another_tab_is_applied_and_no_second_one_starts(owner_client, acme, stripe_fake):
    plan = paid_plan()
    _response, first = start_checkout(owner_client, acme, plan)
    stripe_fake.complete_checkout(first.stripe_session_id)  # paid, but neither the return page nor a webhook yet
    response, latest = start_checkout(owner_client, acme, plan)
    assert response.status_code == 409 and "already subscribe" in text(response)
    assert latest.pk == first.pk  # no second Checkout
    assert Subscription.objects.get(tenant=acme).status == "active"


def test_a_huge_page_number_on_the_reconciliation_overview_is_no_500(staff_client, acme):
    response = staff_client.get("/staff/reconciliation/?page=99999999999999999999999")
    assert response.status_code == 200


# --- rounding -----------------------------------------------------------------------------------------------------
def test_the_data_planes_cost_of_a_request_is_the_rollups_to_the_micro_dollar():
    """The spend cap counts each request at the data plane's cost; the rollups (and the limit counters' rebuild)
    rate it exactly. In floating point, 5 tokens at A$0.20 per million came to 1.0000000000000002 micro-A$ and
    rounded up to 2: a budget counted more than the rollups say was spent."""
    from decimal import Decimal

    from billing import pricing
    from billing.rollups import event_cost_micro_aud
    from inference.gateway.backends import PRICE_UNITS_PER_MICRO, BackendPool

    assert PRICE_UNITS_PER_MICRO == pricing.UNITS_PER_MICRO
    pool = BackendPool.__new__(BackendPool)
    platform = {"m": pricing.Price(Decimal("0.2"), Decimal("0.6")), "n": pricing.Price(Decimal("3"), Decimal("9"))}
    pool.prices = {model: (float(p.input), float(p.output)) for model, p in platform.items()}
    pool.price_lists = {}
    scaled = pricing.scaled_table(platform)
    wrong = [(model, prompt, completion) for model in platform for prompt in range(0, 400) for completion in (0, 7)
             if pool.cost_micro_aud(model, prompt, completion) != event_cost_micro_aud(scaled, model, prompt,
                                                                                       completion)]
    assert wrong == []


# --- webhooks while Stripe is away ----------------------------------------------------------------------------------
def test_a_newer_tax_id_event_does_not_make_a_waiting_subscription_change_look_applied(client, owner_client, acme,
                                                                                       stripe_fake):
    """A tax id change re-reads the tax ids, not the subscription: it used to stamp the subscription as seen up to
    its time, so a subscription change that arrived while Stripe was unreachable was taken as already applied and
    dropped (a tenant that should go past due, or back in good standing after paying, never did)."""
    import time

    from billing import stripe_events
    from billing.models import StripeEvent
    from tests.billing.stripe_helpers import post_event

    subscription = subscribe(owner_client, acme, paid_plan(), stripe_fake)
    now = int(time.time())
    stripe_fake.set_card_declines(subscription.stripe_customer_id)
    stripe_fake.advance(subscription.stripe_subscription_id)
    change = [e for e in stripe_fake.events if e["type"] == "customer.subscription.updated"][-1]
    change = {**change, "created": now + 60}
    stripe_fake.set_tax_id(subscription.stripe_customer_id, "51 824 753 556")
    tax = {**stripe_fake.events_of("customer.tax_id.created")[-1], "created": now + 120}
    assert post_event(client, stripe_fake, tax).status_code == 200
    assert Subscription.objects.get(tenant=acme).tax_ids
    stripe_fake.fail_next("/v1/subscriptions", count=6, status=503)
    assert post_event(client, stripe_fake, change).status_code == 200
    with stripe_fake.state.lock:
        stripe_fake._faults.clear()  # Stripe is back
    waiting = StripeEvent.objects.get(event_id=change["id"])
    assert waiting.processed_at is None and "retry" in waiting.error
    # Stripe is back: the periodic retry applies it.
    StripeEvent.objects.filter(pk=waiting.pk).update(received_at=waiting.received_at.replace(year=2000))
    assert stripe_events.events_retry() == 1
    assert Subscription.objects.get(tenant=acme).status == "past_due"


def test_subscribing_again_in_the_hour_a_subscription_ended_reports_the_new_ones_usage_in_full(acme):
    """The part of the hour before the cancellation was reported under the old subscription; the new one starting
    later in that hour must not have its own part reduced by it."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.meters import meter_reports_plan
    from billing.rollups import rollups_update
    from tests.billing.metering_setup import LARGE, add_event, hour_floor, metered_plan
    from tests.billing.metering_setup import subscribe as subscribe_row

    metered = metered_plan(with_stripe=False)
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    row = subscribe_row(acme, metered.plan, since=hour - timedelta(days=10), with_stripe=False,
                        started_at=hour - timedelta(days=10))
    add_event(acme, hour + timedelta(minutes=10), prompt=100, completion=0)
    row.status, row.current_period_end = "canceled", hour + timedelta(minutes=20)
    row.save()
    rollups_update()
    [old] = meter_reports_plan(now=now)
    assert (old.span_start, old.quantity) == (hour, 100)
    restart = hour + timedelta(minutes=40)
    row.status, row.started_at, row.current_period_start = "active", restart, restart
    row.current_period_end = restart + timedelta(days=30)
    row.save()
    add_event(acme, hour + timedelta(minutes=50), prompt=30, completion=0)
    rollups_update()
    rows = meter_reports_plan(now=now + timedelta(minutes=1))
    assert [(r.meter, r.span_start, r.quantity) for r in rows] == [
        (metered.meter(LARGE, "input").event_name, restart, 30)]


# --- a model priced after a subscription was sold -----------------------------------------------------------------
def test_a_model_priced_after_subscribing_is_added_to_running_subscriptions(owner_client, acme, stripe_fake):
    """A Stripe subscription bills only the prices it holds: a model priced later (a new model served) got a meter
    and a price on the plan, but running subscriptions never held it, so every subscriber's use of it was reported
    and never invoiced, while the console showed them its cost. The sync adds it to them."""
    from decimal import Decimal

    from billing import plan_sync
    from billing.models import ModelPrice, StripePrice

    plan = paid_plan()
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    new_model = "mistralai/Mistral-Small-24B-Instruct-2501"
    ModelPrice.objects.create(model=new_model, input_per_1k_aud=Decimal("0.001"), output_per_1k_aud=Decimal("0.003"))
    plan_sync.plan_stripe_sync(plan=plan)
    new_prices = set(StripePrice.objects.filter(plan=plan, active=True, model=new_model)
                     .values_list("stripe_price_id", flat=True))
    assert len(new_prices) == 2
    with stripe_fake.state.lock:
        held = {item["price"]["id"] for item in
                stripe_fake.state.subscriptions[subscription.stripe_subscription_id]["items"]["data"]}
    assert new_prices <= held
    # Synced again: nothing added twice.
    plan_sync.plan_stripe_sync(plan=plan)
    with stripe_fake.state.lock:
        items = stripe_fake.state.subscriptions[subscription.stripe_subscription_id]["items"]["data"]
    assert len([i for i in items if i["price"]["id"] in new_prices]) == 2
    # Its use is invoiced at the period's end.
    import time

    from billing import stripe_gateway
    from billing.models import StripeMeter

    meter = StripeMeter.objects.get(model=new_model, direction="output")
    stripe_gateway.meter_event_create(event_name=meter.event_name, customer_id=subscription.stripe_customer_id,
                                      value=200_000, timestamp=int(time.time()), identifier="attack-new-model")
    invoice = stripe_fake.advance(subscription.stripe_subscription_id)
    with stripe_fake.state.lock:
        lines = stripe_fake.state.invoice_lines(invoice["id"])
    billed = [line for line in lines if line.get("pricing", {}).get("price_details", {}).get("price") in new_prices
              or (line.get("price") or {}).get("id") in new_prices]
    assert billed and sum(line["amount"] for line in billed) > 0
