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
