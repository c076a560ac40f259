"""Access follows the subscription: active and trialing serve; past due serves through the grace period (banner,
email), then /v1 answers 402 payment_required at the deadline on its own clock (no republish); paying the invoice
restores service within a second. Plans without requires_payment, and installations without Stripe, never refuse."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from billing import payment_access, snapshot
from billing.models import Plan, Subscription
from billing.payment_notices import payment_notices_send
from core import contract
from core.redis import get_redis
from tests.billing.stripe_helpers import MODEL, deliver_new, paid_plan, subscribe
from tests.conftest import wait_for


def _chat(server, key: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                      timeout=10)


def _published(tenant) -> contract.TenantRecord:
    return contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(tenant.pk))))


# --- the rule -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "refused_now"), [
    ("active", False), ("trialing", False), ("", True), ("incomplete", True), ("canceled", True), ("unpaid", True),
    ("paused", True), ("incomplete_expired", True),
])
def test_the_rule_by_status(status, refused_now, db):
    plan = Plan(slug="p", name="P", requires_payment=True)
    subscription = Subscription(status=status)
    after = payment_access.unpaid_after(plan=plan, subscription=subscription, configured=True)
    assert (after == payment_access.REFUSED_NOW) is refused_now and (after is None) is (not refused_now)


def test_past_due_serves_until_the_grace_period_ends(db, settings):
    settings.BILLING_GRACE_DAYS = 7
    since = timezone.now() - timedelta(days=2)
    subscription = Subscription(status="past_due", past_due_since=since)
    plan = Plan(slug="p", name="P", requires_payment=True)
    assert payment_access.unpaid_after(plan=plan, subscription=subscription, configured=True) == pytest.approx(
        (since + timedelta(days=7)).timestamp())


def test_free_plans_and_no_stripe_never_refuse(db):
    unpaid = Subscription(status="unpaid")
    assert payment_access.unpaid_after(plan=Plan(requires_payment=False), subscription=unpaid, configured=True) is None
    assert payment_access.unpaid_after(plan=Plan(requires_payment=True), subscription=unpaid, configured=False) is None
    assert payment_access.unpaid_after(plan=None, subscription=None, configured=True) is None


def test_a_tenant_put_on_a_paid_plan_without_a_subscription_is_refused(acme, stripe_fake, unthrottled,
                                                                       django_capture_on_commit_callbacks):
    from billing.services import tenant_quota_set

    plan = paid_plan(sync=False)
    with django_capture_on_commit_callbacks(execute=True):
        tenant_quota_set(tenant=acme, plan=plan)
    assert _published(acme).unpaid_after == payment_access.REFUSED_NOW


# --- end to end through /v1 ---------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_past_due_through_grace_to_402_and_back_when_the_invoice_is_paid(
        gateway_ready, acme, alice, issue_key, stripe_fake, owner_client, client, settings, mailoutbox):
    settings.BILLING_GRACE_DAYS = 7
    plan = paid_plan()
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    key = issue_key(acme)
    assert _chat(gateway_ready, key).status_code == 200
    assert _published(acme).unpaid_after is None

    # A renewal fails: past due, still served, a banner and one email.
    stripe_fake.set_card_declines(subscription.stripe_customer_id)
    mark = len(stripe_fake.events)
    invoice = stripe_fake.advance(subscription.stripe_subscription_id)
    mark = deliver_new(client, stripe_fake, mark)
    subscription.refresh_from_db()
    assert subscription.status == "past_due" and subscription.past_due_since is not None
    assert _chat(gateway_ready, key).status_code == 200
    assert [m.subject for m in mailoutbox] == [f"[Wattle] {acme.name}: a payment failed"]
    assert "billing@acme.example" in mailoutbox[0].to and alice.email in mailoutbox[0].to
    page = owner_client.get(f"/t/{acme.slug}/keys/")
    assert b'id="payment-banner"' in page.content and b"Pay now" in page.content

    # The grace period ends 1.5 s from now: the data plane refuses at the deadline, nothing republished.
    deadline = time.time() + 1.5
    Subscription.objects.filter(pk=subscription.pk).update(
        past_due_since=timezone.now() - timedelta(days=7) + timedelta(seconds=1.5))
    snapshot.publish_tenant(acme)
    assert _chat(gateway_ready, key).status_code == 200
    wait_for(lambda: _chat(gateway_ready, key).status_code == 402, timeout=5)
    assert time.time() >= deadline - 0.05  # not before it (the clocks are the same machine's)
    refused = _chat(gateway_ready, key)
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "payment_required" and "Billing page" in error["message"]
    assert payment_notices_send() == 1
    assert payment_notices_send() == 0  # once
    assert mailoutbox[-1].subject == f"[Wattle] {acme.name}: the API is stopped until payment"

    # The customer pays: the invoice.paid webhook restores service within a second.
    stripe_fake.pay(invoice["id"])
    deliver_new(client, stripe_fake, mark)
    delivered = time.monotonic()
    wait_for(lambda: _chat(gateway_ready, key).status_code == 200, timeout=1.0)
    assert time.monotonic() - delivered < 1.0
    subscription.refresh_from_db()
    assert subscription.status == "active" and subscription.past_due_since is None
    assert _published(acme).unpaid_after is None
    assert b'id="payment-banner"' not in owner_client.get(f"/t/{acme.slug}/keys/").content


def _past_due(tenant, plan, *, days_ago: float) -> Subscription:
    from billing.services import tenant_quota_set

    tenant_quota_set(tenant=tenant, plan=plan)
    subscription, _ = Subscription.objects.update_or_create(
        tenant=tenant, defaults={"plan": plan, "status": "past_due", "stripe_customer_id": "cus_test",
                                 "past_due_since": timezone.now() - timedelta(days=days_ago)})
    return subscription


def test_payment_notices_are_sent_once_per_episode(acme, stripe_fake, settings, mailoutbox,
                                                    django_capture_on_commit_callbacks):
    def payment_notices_send():
        from billing.payment_notices import payment_notices_send as send

        with django_capture_on_commit_callbacks(execute=True):
            return send()

    settings.BILLING_GRACE_DAYS = 7
    subscription = _past_due(acme, paid_plan(sync=False), days_ago=1)
    assert payment_notices_send() == 1 and payment_notices_send() == 0
    assert mailoutbox[0].subject.endswith("a payment failed") and "/billing/" in mailoutbox[0].body
    # The deadline passes: the second notice, once.
    Subscription.objects.filter(pk=subscription.pk).update(past_due_since=timezone.now() - timedelta(days=8))
    assert payment_notices_send() == 1 and payment_notices_send() == 0
    assert mailoutbox[-1].subject.endswith("the API is stopped until payment")
    # Paid, then a later payment fails: a new episode, told again.
    Subscription.objects.filter(pk=subscription.pk).update(status="past_due", past_due_since=timezone.now())
    assert payment_notices_send() == 1
    assert len(mailoutbox) == 3
    from audit.models import AuditEntry

    assert AuditEntry.objects.filter(action="billing.payment.past_due_notice", tenant=acme).count() == 2
    assert AuditEntry.objects.filter(action="billing.payment.refused_notice", tenant=acme).count() == 1


def test_no_notice_without_stripe(acme, settings, mailoutbox):
    settings.STRIPE_SECRET_KEY = ""
    _past_due(acme, paid_plan(sync=False), days_ago=30)
    assert payment_notices_send() == 0 and mailoutbox == []


def test_the_reconciliation_republishes_a_subscription_change(acme, stripe_fake, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        _past_due(acme, paid_plan(sync=False), days_ago=1)
    snapshot.reconcile()
    assert _published(acme).unpaid_after is not None and _published(acme).unpaid_after > time.time()
    # A change whose publish was lost (written here without one) is picked up by the next run.
    Subscription.objects.filter(tenant=acme).update(status="unpaid", updated_at=timezone.now())
    snapshot.reconcile()
    assert _published(acme).unpaid_after == payment_access.REFUSED_NOW


def test_banner_is_for_billing_roles_and_others_are_told_whom_to_ask(acme, member_of, stripe_fake, owner_client,
                                                                     client):
    from django.test import Client

    from tests.conftest import sign_in

    plan = paid_plan()
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    stripe_fake.set_card_declines(subscription.stripe_customer_id)
    mark = len(stripe_fake.events)
    stripe_fake.advance(subscription.stripe_subscription_id)
    deliver_new(client, stripe_fake, mark)
    developer = sign_in(Client(), member_of(acme, "developer"))
    page = developer.get(f"/t/{acme.slug}/keys/").content.decode()
    assert 'id="payment-banner"' in page and "Ask an owner or a billing member" in page
    assert "Pay now" not in page
    owner_page = owner_client.get(f"/t/{acme.slug}/keys/").content.decode()
    assert "Update payment method" in owner_page and "Pay now" in owner_page


def test_no_banner_in_good_standing_or_without_stripe(acme, owner_client, stripe_fake, settings):
    subscribe(owner_client, acme, paid_plan(), stripe_fake)
    assert b'id="payment-banner"' not in owner_client.get(f"/t/{acme.slug}/keys/").content
    settings.STRIPE_SECRET_KEY = ""
    Subscription.objects.filter(tenant=acme).update(status="unpaid")
    assert b'id="payment-banner"' not in owner_client.get(f"/t/{acme.slug}/keys/").content
