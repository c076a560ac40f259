"""Stripe's webhooks: verified on the raw body (forged, unsigned, stale and malformed requests are a 400 and an
audit entry that never echoes the body), stored once per event id (a replay is a no-op), applied by re-reading
Stripe so the order of delivery doesn't matter, and retried when Stripe can't be reached."""

from __future__ import annotations

import copy
import time

import orjson
import pytest

from audit.models import AuditEntry
from billing import stripe_events
from billing.models import Invoice, StripeEvent, Subscription, TenantQuota
from tests.billing.stripe_helpers import WEBHOOK, deliver_new, paid_plan, post_event, start_checkout, subscribe
from tests.fakes.stripe import sign


def _subscription_event(fake, subscription_id: str, status: str, created: int) -> dict:
    """A customer.subscription.updated event as Stripe would have sent it at ``created``."""
    with fake.state.lock:
        obj = copy.deepcopy(fake.state.subscriptions[subscription_id])
    obj["status"] = status
    return {"id": f"evt_test_{status}_{created}", "object": "event", "api_version": "2025-03-31.basil",
            "created": created, "data": {"object": obj}, "livemode": False, "type": "customer.subscription.updated"}


# --- verification -------------------------------------------------------------------------------------------------
def test_a_forged_signature_is_400_and_audited_without_the_body(client, stripe_fake, db):
    event = {"id": "evt_forged", "object": "event", "type": "invoice.paid", "created": int(time.time()),
             "data": {"object": {"id": "in_x", "customer": "cus_secret_customer"}}}
    response = post_event(client, stripe_fake, event, secret="whsec_not_ours")
    assert response.status_code == 400 and response.json()["error"] == "invalid_signature"
    assert "cus_secret_customer" not in response.content.decode()
    entry = AuditEntry.objects.get(action="billing.webhook.signature_failed")
    assert "cus_secret_customer" not in orjson.dumps(entry.data).decode()
    assert entry.data["signature_header"] is True and entry.data["body_bytes"] > 0
    assert not StripeEvent.objects.exists()


def test_an_unsigned_request_is_400(client, stripe_fake, db):
    response = client.post(WEBHOOK, data=b'{"id": "evt_1", "object": "event"}', content_type="application/json")
    assert response.status_code == 400
    assert AuditEntry.objects.get(action="billing.webhook.signature_failed").data["signature_header"] is False


def test_a_stale_signature_is_400(client, stripe_fake, db):
    event = {"id": "evt_stale", "object": "event", "type": "invoice.paid", "created": int(time.time()) - 400,
             "data": {"object": {"id": "in_x"}}}
    response = post_event(client, stripe_fake, event, timestamp=int(time.time()) - 301)
    assert response.status_code == 400
    assert "tolerance" in AuditEntry.objects.get(action="billing.webhook.signature_failed").data["reason"]


def test_a_signed_body_that_is_not_an_event_is_400(client, stripe_fake, db):
    for body in (b"not json", b'{"object": "customer", "id": "cus_1"}', b"[]"):
        header = sign(body, stripe_fake.webhook_secret)
        response = client.post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
        assert response.status_code == 400
    assert AuditEntry.objects.filter(action="billing.webhook.signature_failed").count() == 3


def test_without_a_webhook_secret_nothing_is_accepted(client, stripe_fake, settings, db):
    event = {"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1, "data": {"object": {}}}
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert post_event(client, stripe_fake, event).status_code == 400


def test_the_webhook_takes_only_post(client, db):
    assert client.get(WEBHOOK).status_code == 405


# --- storing and applying -----------------------------------------------------------------------------------------
@pytest.fixture
def subscribed(owner_client, acme, stripe_fake):
    """Acme subscribed to Developer through Checkout (the return page applied it); no event delivered yet."""
    plan = paid_plan()
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    return subscription


def test_checkout_completed_webhook_subscribes_the_tenant(owner_client, client, acme, stripe_fake):
    plan = paid_plan()
    _response, session = start_checkout(owner_client, acme, plan)
    mark = len(stripe_fake.events)
    stripe_fake.complete_checkout(session.stripe_session_id)
    completed = stripe_fake.events_of("checkout.session.completed")[-1]
    assert post_event(client, stripe_fake, completed).json() == {"received": True, "duplicate": False}
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == "active" and subscription.plan == plan
    assert subscription.stripe_seen == completed["created"]
    assert TenantQuota.objects.get(tenant=acme).plan == plan
    deliver_new(client, stripe_fake, mark)  # the rest of the events: all processed, nothing left waiting
    assert not StripeEvent.objects.filter(processed_at__isnull=True).exists()
    assert Invoice.objects.filter(tenant=acme, status="paid").count() == 1


def test_a_replayed_event_is_processed_once(client, subscribed, stripe_fake, acme):
    stripe_fake.set_card_declines(subscribed.stripe_customer_id)
    mark = len(stripe_fake.events)
    stripe_fake.advance(subscribed.stripe_subscription_id)
    failed = [e for e in stripe_fake.events[mark:] if e["type"] == "customer.subscription.updated"][-1]
    assert post_event(client, stripe_fake, failed).json()["duplicate"] is False
    updates = AuditEntry.objects.filter(action="billing.subscription.update", tenant=acme).count()
    requests = len(stripe_fake.requests)
    response = post_event(client, stripe_fake, failed)
    assert response.status_code == 200 and response.json() == {"received": True, "duplicate": True}
    assert StripeEvent.objects.filter(event_id=failed["id"]).count() == 1
    assert AuditEntry.objects.filter(action="billing.subscription.update", tenant=acme).count() == updates
    assert len(stripe_fake.requests) == requests  # not even a re-read


def test_an_older_update_after_a_newer_one_changes_nothing(client, subscribed, stripe_fake, acme):
    now = int(time.time())
    newer = _subscription_event(stripe_fake, subscribed.stripe_subscription_id, "active", now)
    older = _subscription_event(stripe_fake, subscribed.stripe_subscription_id, "past_due", now - 60)
    post_event(client, stripe_fake, newer)
    updates = AuditEntry.objects.filter(action="billing.subscription.update", tenant=acme).count()
    post_event(client, stripe_fake, older)  # Stripe re-read: the subscription is active
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == "active" and subscription.past_due_since is None
    assert subscription.stripe_seen == now
    assert AuditEntry.objects.filter(action="billing.subscription.update", tenant=acme).count() == updates


def test_with_stripe_unreachable_an_older_event_is_done_and_a_newer_one_waits(client, subscribed, stripe_fake,
                                                                               acme):
    now = int(time.time())
    post_event(client, stripe_fake, _subscription_event(stripe_fake, subscribed.stripe_subscription_id, "active",
                                                        now))
    stripe_fake.fail_next("/v1/subscriptions", count=6, status=503)
    older = _subscription_event(stripe_fake, subscribed.stripe_subscription_id, "past_due", now - 60)
    post_event(client, stripe_fake, older)
    assert StripeEvent.objects.get(event_id=older["id"]).processed_at is not None
    assert Subscription.objects.get(tenant=acme).status == "active"
    # A newer event while Stripe is away: kept, not applied from its own (possibly stale) copy.
    stripe_fake.set_card_declines(subscribed.stripe_customer_id)
    stripe_fake.advance(subscribed.stripe_subscription_id)
    newer = [e for e in stripe_fake.events if e["type"] == "customer.subscription.updated"][-1]
    newer["created"] = now + 60
    assert post_event(client, stripe_fake, newer).status_code == 200
    waiting = StripeEvent.objects.get(event_id=newer["id"])
    assert waiting.processed_at is None and "retry" in waiting.error
    assert Subscription.objects.get(tenant=acme).status == "active"
    # Stripe is back: the periodic retry applies it.
    StripeEvent.objects.filter(pk=waiting.pk).update(received_at=waiting.received_at.replace(year=2000))
    assert stripe_events.events_retry() == 1
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == "past_due" and subscription.past_due_since is not None


def test_invoice_events_keep_the_invoice_table_current(client, subscribed, stripe_fake, acme):
    stripe_fake.set_card_declines(subscribed.stripe_customer_id)
    mark = len(stripe_fake.events)
    invoice = stripe_fake.advance(subscribed.stripe_subscription_id)
    deliver_new(client, stripe_fake, mark)
    row = Invoice.objects.get(stripe_invoice_id=invoice["id"])
    assert row.tenant == acme and row.status == "open" and row.amount_due_cents == invoice["amount_due"]
    assert row.hosted_invoice_url and row.lines
    mark = deliver_new(client, stripe_fake, 0)
    stripe_fake.pay(invoice["id"])
    deliver_new(client, stripe_fake, mark)
    row.refresh_from_db()
    assert row.status == "paid" and row.amount_paid_cents == invoice["amount_due"]
    assert Subscription.objects.get(tenant=acme).status == "active"


def test_a_cancellation_in_good_standing_moves_the_tenant_to_the_default_plan(client, subscribed, stripe_fake,
                                                                               acme):
    mark = len(stripe_fake.events)
    stripe_fake.cancel(subscribed.stripe_subscription_id)
    deliver_new(client, stripe_fake, mark)
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == "canceled"
    assert TenantQuota.objects.get(tenant=acme).plan is None  # follows the default (Trial) plan again
    from billing.subscriptions import billing_state

    assert billing_state(acme).refused is False and billing_state(acme).can_checkout is True


def test_a_subscription_that_ended_unpaid_keeps_its_plan_and_stays_refused(client, subscribed, stripe_fake, acme):
    stripe_fake.set_card_declines(subscribed.stripe_customer_id)
    mark = len(stripe_fake.events)
    stripe_fake.advance(subscribed.stripe_subscription_id)
    mark = deliver_new(client, stripe_fake, mark)
    assert Subscription.objects.get(tenant=acme).status == "past_due"
    stripe_fake.cancel(subscribed.stripe_subscription_id)
    deliver_new(client, stripe_fake, mark)
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == "canceled"
    assert TenantQuota.objects.get(tenant=acme).plan == subscribed.plan
    # Delivered again later (a late copy), it still doesn't move the tenant.
    deleted = stripe_fake.events_of("customer.subscription.deleted")[-1]
    deleted = {**deleted, "id": deleted["id"] + "_again"}
    post_event(client, stripe_fake, deleted)
    assert TenantQuota.objects.get(tenant=acme).plan == subscribed.plan
    from billing.subscriptions import billing_state

    state = billing_state(acme)
    assert state.refused is True and "402 payment_required" in state.message


def test_a_tax_id_event_keeps_the_tax_ids_and_the_abn(client, subscribed, stripe_fake, acme):
    mark = len(stripe_fake.events)
    stripe_fake.set_tax_id(subscribed.stripe_customer_id, "51 824 753 556")
    deliver_new(client, stripe_fake, mark)
    subscription = Subscription.objects.get(tenant=acme)
    assert [t["type"] for t in subscription.tax_ids] == ["au_abn"]
    acme.refresh_from_db()
    assert acme.abn == "51824753556"
    assert AuditEntry.objects.filter(action="tenant.update", tenant=acme).exists()


def test_events_of_other_kinds_or_customers_are_stored_and_left(client, stripe_fake, db):
    now = int(time.time())
    for event in (
        {"id": "evt_other_kind", "object": "event", "type": "product.created", "created": now,
         "data": {"object": {"id": "prod_1", "object": "product"}}},
        {"id": "evt_not_ours", "object": "event", "type": "customer.tax_id.created", "created": now,
         "data": {"object": {"id": "txi_1", "object": "tax_id", "customer": "cus_nobody"}}},
    ):
        assert post_event(client, stripe_fake, event).status_code == 200
    stored = {e.event_id: e for e in StripeEvent.objects.all()}
    assert stored["evt_other_kind"].processed_at is not None and stored["evt_other_kind"].error == "not handled"
    assert stored["evt_not_ours"].processed_at is not None


def test_late_news_of_an_ended_subscription_leaves_the_new_one(client, owner_client, subscribed, stripe_fake, acme):
    first = subscribed.stripe_subscription_id
    mark = len(stripe_fake.events)
    stripe_fake.cancel(first)
    mark = deliver_new(client, stripe_fake, mark)
    second = subscribe(owner_client, acme, subscribed.plan, stripe_fake)
    assert second.stripe_subscription_id != first and second.status == "active"
    deleted = {**stripe_fake.events_of("customer.subscription.deleted")[-1], "id": "evt_late_copy"}
    post_event(client, stripe_fake, deleted)
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.stripe_subscription_id == second.stripe_subscription_id and subscription.status == "active"
    assert TenantQuota.objects.get(tenant=acme).plan == subscribed.plan
