"""The staff metering reconciliation: our usage, the meter outbox, Stripe's figures and invoices per tenant, period
and meter, with differences flagged; staff only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import stripe_gateway
from billing.meters import meter_jobs
from billing.models import Invoice, MeterReport
from billing.reconciliation import tenant_reconciliation
from tests.billing.metering_setup import LARGE, SMALL, add_event, hour_floor, metered_plan, subscribe
from tests.conftest import add_passkey, add_totp, make_user, sign_in

pytestmark = pytest.mark.django_db

SUMMARIES = "/v1/billing/meters/"


@pytest.fixture
def reported(acme, stripe_fake):
    """Acme on a metered plan, three hours of usage reported to the Stripe stand-in and acknowledged."""
    metered = metered_plan(with_stripe=True)
    now = timezone.now()
    first = hour_floor(now) - timedelta(hours=5)
    subscription = subscribe(acme, metered.plan, since=first - timedelta(days=1), with_stripe=True)
    for hour in range(3):
        add_event(acme, first + timedelta(hours=hour, minutes=10), model=LARGE, prompt=1000 + hour, completion=200)
        add_event(acme, first + timedelta(hours=hour, minutes=20), model=SMALL, prompt=50, completion=0)
    meter_jobs(now=now)
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()
    return metered, subscription, now


def lines_of(report, period: int = 0) -> dict[str, object]:
    return {line.meter.event_name: line for line in report.periods[period].lines}


def test_everything_reported_and_held_by_stripe_shows_no_difference(acme, reported):
    metered, _subscription, now = reported
    report = tenant_reconciliation(tenant=acme, now=now)
    assert [p.label for p in report.periods] == ["Current period", "Previous period"]
    lines = lines_of(report)
    large_in = lines[metered.meter(LARGE, "input").event_name]
    assert (large_in.ours, large_in.due, large_in.reported, large_in.stripe) == (3003, 3003, 3003, 3003)
    assert (large_in.waiting, large_in.refused, large_in.invoiced) == (0, 0, None)
    assert lines[metered.meter(SMALL, "input").event_name].stripe == 150
    assert metered.meter(SMALL, "output").event_name not in lines  # nothing to show
    assert not report.flagged


def test_a_planted_difference_with_stripe_is_flagged(acme, reported):
    metered, subscription, now = reported
    meter = metered.meter(LARGE, "output")
    # Someone sent Stripe an event the outbox knows nothing of.
    stripe_gateway.meter_event_create(event_name=meter.event_name, customer_id=subscription.stripe_customer_id,
                                      value=7, timestamp=int(hour_floor(now).timestamp()) - 3600,
                                      identifier="planted-by-hand")
    report = tenant_reconciliation(tenant=acme, now=now)
    line = lines_of(report)[meter.event_name]
    assert (line.reported, line.stripe) == (600, 607)
    assert line.flags == ["Stripe holds a different total than was reported"]
    assert report.flagged


def test_usage_missing_from_the_outbox_and_refused_reports_are_flagged_and_counted(acme, reported):
    metered, _subscription, now = reported
    meter = metered.meter(LARGE, "input")
    MeterReport.objects.filter(meter=meter.event_name, sequence=0).order_by("hour").first().delete()  # planted
    refused = MeterReport.objects.filter(meter=metered.meter(SMALL, "input").event_name).first()
    MeterReport.objects.filter(pk=refused.pk).update(sent_at=None, refused=True, last_error="No such customer")
    lines = lines_of(tenant_reconciliation(tenant=acme, now=now, ask_stripe=False))
    assert lines[meter.event_name].flags == ["1,000 tokens not in the outbox"]
    small = lines[metered.meter(SMALL, "input").event_name]
    assert (small.reported, small.refused) == (100, 50)
    assert "50 tokens refused by Stripe" in small.flags


def test_an_invoice_with_another_quantity_is_flagged(acme, reported):
    metered, subscription, now = reported
    # Move the usage into the previous period: the invoice Stripe issued when it ended bills it.
    subscription.current_period_start = hour_floor(now)
    subscription.current_period_end = hour_floor(now) + timedelta(days=30)
    subscription.save()
    previous_start = hour_floor(now) - timedelta(days=30)
    large_in, large_out = metered.meter(LARGE, "input"), metered.meter(LARGE, "output")
    Invoice.objects.create(
        tenant=acme, stripe_invoice_id="in_planted", status="paid", created=now,
        period_start=previous_start, period_end=hour_floor(now),
        lines=[{"price": "price_x", "meter": large_in.stripe_meter_id, "quantity": 3003},
               {"price": "price_y", "meter": large_out.stripe_meter_id, "quantity": 599}])
    report = tenant_reconciliation(tenant=acme, now=now)
    assert report.periods[1].start == previous_start  # the invoice's period, not a guess
    lines = lines_of(report, period=1)
    assert (lines[large_in.event_name].invoiced, lines[large_in.event_name].flags) == (3003, [])
    assert lines[large_out.event_name].invoiced == 599
    assert lines[large_out.event_name].flags == ["invoiced a different quantity than Stripe holds"]
    assert lines[metered.meter(SMALL, "input").event_name].invoiced == 0  # invoiced period, no line: none billed


def test_staff_see_the_tenant_page_with_stripes_figures(acme, reported, staff_client):
    metered, _subscription, _now = reported
    response = staff_client.get(f"/staff/reconciliation/{acme.slug}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert metered.meter(LARGE, "input").event_name in page and "3,003" in page
    assert "unavailable" not in page and "level-over" not in page


def test_the_tenant_page_says_unavailable_when_stripe_fails(acme, reported, staff_client, stripe_fake, settings):
    settings.STRIPE_MAX_RETRIES = 0
    stripe_fake.fail_next(SUMMARIES, count=50, status=500)
    response = staff_client.get(f"/staff/reconciliation/{acme.slug}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Stripe: unavailable." in page and "3,003" in page


def test_a_period_starting_in_the_first_minute_of_an_hour_reconciles_clean(acme, stripe_fake):
    """Stripe's summaries take whole minutes: asked from 05:00 for a period starting at 05:00:30, they include the
    previous period's part-hour stamped 05:00, which the comparison counts on our side too."""
    metered = metered_plan(with_stripe=True)
    now = timezone.now()
    hour = hour_floor(now) - timedelta(hours=3)
    renewal = hour + timedelta(seconds=30)
    subscribe(acme, metered.plan, since=renewal, started_at=renewal - timedelta(days=30), with_stripe=True)
    add_event(acme, hour + timedelta(seconds=10), model=LARGE, prompt=7, completion=0)  # the previous period's
    add_event(acme, hour + timedelta(minutes=20), model=LARGE, prompt=1_000, completion=0)
    meter_jobs(now=now)
    report = tenant_reconciliation(tenant=acme, now=now)
    current, previous = (lines_of(report, period)[metered.meter(LARGE, "input").event_name] for period in (0, 1))
    assert (current.ours, current.due, current.reported) == (1_000, 1_000, 1_000)
    assert (previous.ours, previous.due, previous.reported) == (7, 7, 7)
    assert current.stripe == current.stripe_reported == 1_007
    assert not report.flagged


def test_a_tenant_without_a_subscription_is_reconciled_by_calendar_month(acme):
    add_event(acme, timezone.now() - timedelta(minutes=5))
    report = tenant_reconciliation(tenant=acme)
    assert [p.label for p in report.periods] == ["This month", "Last month"]
    assert not report.flagged


# --- who may see it ---------------------------------------------------------------------------------------------
def test_the_overview_lists_flagged_tenants_and_links_each_one(acme, reported, staff_client):
    MeterReport.objects.filter(sequence=0).order_by("hour").first().delete()
    response = staff_client.get("/staff/reconciliation/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f"/staff/reconciliation/{acme.slug}/" in page and "not in the outbox" in page
    assert 'href="/staff/reconciliation/" aria-current="page"' in page  # in the staff navigation


def test_staff_pages_are_for_staff_only(client, acme, alice):
    urls = ["/staff/reconciliation/", f"/staff/reconciliation/{acme.slug}/"]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    add_totp(alice)
    sign_in(client, alice)  # Acme's owner, not staff
    for url in urls:
        assert client.get(url).status_code == 404, url
    staff_without_passkey = make_user("new-ops@wattle.example", staff=True)
    add_passkey(staff_without_passkey)
    sign_in(client, staff_without_passkey)  # has a passkey, did not use it in this session
    response = client.get(urls[0])
    assert response.status_code == 302 and "webauthn" in response["Location"]


def test_an_unknown_tenant_is_a_404(staff_client):
    assert staff_client.get("/staff/reconciliation/no-such-tenant/").status_code == 404


def test_the_overview_says_when_there_is_nothing_to_reconcile(staff_client, acme):
    response = staff_client.get("/staff/reconciliation/?page=x")  # a malformed page number is the first page
    assert response.status_code == 200
    assert "No tenant has a Stripe customer or meter reports yet." in response.content.decode()
