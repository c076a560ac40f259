"""Changing plan through the API (the Customer Portal can't switch a subscription of several products and metered
prices): the stand-in's subscription ends with exactly the new plan's prices and a proration of the fee, the tenant's
plan and published record follow at once, audited; the webhook after it changes nothing; owners and billing members
only, other tenants 404, anonymous to sign-in, POST only; past due, the same plan, a plan that isn't self-serve and a
Stripe failure are refused with words and leave everything as it was."""

from __future__ import annotations

import html

import pytest

from audit.models import AuditEntry
from billing.models import Plan, StripePrice, Subscription, TenantQuota
from core import contract
from core.redis import get_redis
from tenants.models import Role
from tests.billing.stripe_helpers import deliver_new, paid_plan, subscribe
from tests.conftest import add_totp, sign_in


def _text(response) -> str:
    return html.unescape(response.content.decode())


def _change(client, tenant, plan):
    return client.post(f"/t/{tenant.slug}/billing/change/{plan.slug}/")


def _published(tenant) -> contract.TenantRecord:
    return contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(tenant.pk))))


@pytest.fixture
def plans(db, stripe_fake):
    developer = paid_plan()
    business = paid_plan(slug="business", name="Business", fee="499.00")
    Plan.objects.filter(pk=business.pk).update(rpm_limit=5000)
    return developer, Plan.objects.get(pk=business.pk)


@pytest.fixture
def subscribed(owner_client, acme, plans, stripe_fake):
    developer, _business = plans
    return subscribe(owner_client, acme, developer, stripe_fake)


def _stripe_prices(fake, subscription_id) -> set[str]:
    with fake.state.lock:
        return {item["price"]["id"] for item in fake.state.subscriptions[subscription_id]["items"]["data"]}


def _plan_prices(plan) -> set[str]:
    return set(StripePrice.objects.filter(plan=plan, active=True).values_list("stripe_price_id", flat=True))


def test_switching_developer_to_business_changes_stripe_and_the_tenant_at_once(
        owner_client, acme, plans, subscribed, stripe_fake, django_capture_on_commit_callbacks):
    _developer, business = plans
    assert _published(acme).limits.get("rpm") != 5000
    with django_capture_on_commit_callbacks(execute=True):
        response = _change(owner_client, acme, business)
    assert response.status_code == 303 and response["Location"] == f"/t/{acme.slug}/billing/"
    assert _stripe_prices(stripe_fake, subscribed.stripe_subscription_id) == _plan_prices(business)
    with stripe_fake.state.lock:
        items = list(stripe_fake.state.invoice_items.values())
    fees = sorted(i["amount"] for i in items if i["proration"] and i["quantity"] == 1)
    # A credit for the unused Developer fee and a charge for Business for the rest of the period (both nearly whole:
    # the period has just begun).
    assert len(fees) == 2 and -4900 <= fees[0] < -4800 and 49800 < fees[1] <= 49900
    assert TenantQuota.objects.get(tenant=acme).plan == business
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.plan == business and subscription.status == Subscription.Status.ACTIVE
    assert _published(acme).limits.get("rpm") == 5000  # the data plane follows now, not at the webhook
    entry = AuditEntry.objects.get(action="billing.plan.change", tenant=acme)
    assert entry.data["from"] == "developer" and entry.data["to"] == "business"
    page = owner_client.get(f"/t/{acme.slug}/billing/")
    assert "You're now on the Business plan" in _text(page) and "Switch to Developer" in _text(page)


def test_the_webhook_after_a_switch_changes_nothing_more(owner_client, client, acme, plans, subscribed, stripe_fake):
    _developer, business = plans
    seen = len(stripe_fake.events)
    assert _change(owner_client, acme, business).status_code == 303
    updates = AuditEntry.objects.filter(tenant=acme, action__startswith="billing.").count()
    deliver_new(client, stripe_fake, seen)
    assert AuditEntry.objects.filter(tenant=acme, action__startswith="billing.").count() == updates
    assert TenantQuota.objects.get(tenant=acme).plan == business
    assert Subscription.objects.get(tenant=acme).plan == business


def test_the_next_invoice_carries_the_prorations(owner_client, acme, plans, subscribed, stripe_fake):
    _developer, business = plans
    _change(owner_client, acme, business)
    invoice = stripe_fake.advance(subscribed.stripe_subscription_id)
    with stripe_fake.state.lock:
        lines = stripe_fake.state.invoice_lines(invoice["id"])
        pending = [i for i in stripe_fake.state.invoice_items.values() if i["invoice"] is None]
    prorations = [line for line in lines if line["parent"]["type"] == "invoice_item_details"]
    assert len(prorations) >= 2 and not pending
    assert any(line["amount"] < 0 for line in prorations)


def test_the_subscribed_billing_page_offers_switches_not_checkout(owner_client, acme, plans, subscribed):
    body = _text(owner_client.get(f"/t/{acme.slug}/billing/"))
    assert "Switch to Business" in body and "Choose Business" not in body
    assert "prorated: you are credited for the unused part" in body.lower()


def test_checkout_for_a_subscribed_tenant_points_at_the_switch(owner_client, acme, plans, subscribed):
    _developer, business = plans
    response = owner_client.post(f"/t/{acme.slug}/billing/checkout/{business.slug}/")
    assert response.status_code == 409 and 'use "Switch to Business"' in _text(response)


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.AGENT, Role.ADMIN])
def test_other_roles_are_refused(role, acme, member_of, plans, subscribed):
    from django.test import Client

    client = sign_in(Client(), member_of(acme, role))
    assert _change(client, acme, plans[1]).status_code == 403
    assert TenantQuota.objects.get(tenant=acme).plan == plans[0]


def test_a_billing_member_may_switch(acme, member_of, plans, subscribed):
    from django.test import Client

    client = sign_in(Client(), member_of(acme, Role.BILLING))
    assert _change(client, acme, plans[1]).status_code == 303
    assert TenantQuota.objects.get(tenant=acme).plan == plans[1]


def test_another_tenants_member_gets_404(acme, bob, plans, subscribed):
    from django.test import Client

    add_totp(bob)
    assert _change(sign_in(Client(), bob), acme, plans[1]).status_code == 404
    assert TenantQuota.objects.get(tenant=acme).plan == plans[0]


def test_anonymous_is_sent_to_sign_in(client, acme, plans):
    response = _change(client, acme, plans[1])
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_switch_needs_post_and_a_known_plan(owner_client, acme, plans, subscribed):
    assert owner_client.get(f"/t/{acme.slug}/billing/change/{plans[1].slug}/").status_code == 405
    assert owner_client.post(f"/t/{acme.slug}/billing/change/no-such-plan/").status_code == 404


def _refused(owner_client, acme, plan, words, stripe_fake, subscription_id):
    before = _stripe_prices(stripe_fake, subscription_id)
    response = owner_client.post(f"/t/{acme.slug}/billing/change/{plan.slug}/", follow=True)
    assert words in _text(response)
    assert _stripe_prices(stripe_fake, subscription_id) == before
    assert not AuditEntry.objects.filter(action="billing.plan.change", tenant=acme).exists()


def test_past_due_is_told_to_pay_first(owner_client, acme, plans, subscribed, stripe_fake):
    Subscription.objects.filter(pk=subscribed.pk).update(status=Subscription.Status.PAST_DUE)
    _refused(owner_client, acme, plans[1], "Pay the open invoice", stripe_fake, subscribed.stripe_subscription_id)
    assert TenantQuota.objects.get(tenant=acme).plan == plans[0]


def test_the_same_plan_is_refused(owner_client, acme, plans, subscribed, stripe_fake):
    _refused(owner_client, acme, plans[0], "already on the Developer plan", stripe_fake,
             subscribed.stripe_subscription_id)


def test_a_plan_that_is_not_self_serve_is_refused(owner_client, acme, plans, subscribed, stripe_fake):
    enterprise = paid_plan(slug="enterprise", name="Enterprise", fee="2000.00", self_serve=False)
    _refused(owner_client, acme, enterprise, "can't be chosen in the console", stripe_fake,
             subscribed.stripe_subscription_id)
    assert TenantQuota.objects.get(tenant=acme).plan == plans[0]


def test_without_a_subscription_there_is_nothing_to_switch(owner_client, acme, plans, stripe_fake):
    response = _change(owner_client, acme, plans[1])
    assert response.status_code == 303
    assert "no running subscription" in _text(owner_client.get(f"/t/{acme.slug}/billing/"))


def test_a_stripe_failure_changes_nothing_here(owner_client, acme, plans, subscribed, stripe_fake):
    _developer, business = plans
    stripe_fake.fail_next(f"/v1/subscriptions/{subscribed.stripe_subscription_id}", count=20, status=500)
    response = owner_client.post(f"/t/{acme.slug}/billing/change/{business.slug}/", follow=True)
    assert "could not be reached, so your plan was not changed" in _text(response)
    assert TenantQuota.objects.get(tenant=acme).plan == plans[0]
    assert Subscription.objects.get(tenant=acme).plan == plans[0]
    assert not AuditEntry.objects.filter(action="billing.plan.change", tenant=acme).exists()


def test_usage_before_the_switch_is_billed_once_at_the_old_plans_prices(owner_client, acme, plans, subscribed,
                                                                       stripe_fake):
    from billing import stripe_gateway
    from billing.models import StripeMeter

    _developer, business = plans
    meter = StripeMeter.objects.get(direction="input")
    with stripe_fake.state.lock:
        now = stripe_fake.state.now()
    stripe_gateway.meter_event_create(event_name=meter.event_name, customer_id=subscribed.stripe_customer_id,
                                      value=200_000, timestamp=now, identifier="wtl-test-before-switch")
    _change(owner_client, acme, business)
    with stripe_fake.state.lock:
        usage = [i for i in stripe_fake.state.invoice_items.values() if i["quantity"] == 200_000]
    # Developer's price: 100,000 included, then A$0.0002 per 1,000 tokens, so 100,000 charged tokens are 2 cents.
    assert len(usage) == 1 and usage[0]["amount"] == 2
    assert usage[0]["pricing"]["price_details"]["price"] in _plan_prices(plans[0])
    invoice = stripe_fake.advance(subscribed.stripe_subscription_id)
    with stripe_fake.state.lock:
        lines = stripe_fake.state.invoice_lines(invoice["id"])
    metered = [line for line in lines if line["parent"]["type"] == "subscription_item_details" and line["pricing"][
        "price_details"]["price"] == StripePrice.objects.get(plan=business, kind="input").stripe_price_id]
    assert metered and metered[0]["quantity"] == 0  # not billed a second time at Business's prices
    assert any(line["quantity"] == 200_000 for line in lines)  # the usage item went on this invoice


def test_the_gateway_migrates_a_classic_subscription_once_and_sends_one_update(owner_client, acme, plans, subscribed,
                                                                             stripe_fake):
    developer, business = plans
    sub_path = f"/v1/subscriptions/{subscribed.stripe_subscription_id}"
    assert _change(owner_client, acme, business).status_code == 303
    assert _change(owner_client, acme, developer).status_code == 303  # and back
    with stripe_fake.state.lock:
        posts = [r for r in stripe_fake.requests if r["method"] == "POST" and r["path"].startswith(sub_path)]
        mode = stripe_fake.state.subscriptions[subscribed.stripe_subscription_id]["billing_mode"]["type"]
    assert [r["path"] for r in posts] == [f"{sub_path}/migrate", sub_path, sub_path] and mode == "flexible"
    update = posts[1]["params"]
    assert update["proration_behavior"] == "create_prorations" and posts[1]["idempotency_key"]
    deleted = [i for i in update["items"] if i.get("deleted")]
    added = {i["price"] for i in update["items"] if i.get("price")}
    assert len(deleted) == len(_plan_prices(developer)) and added == _plan_prices(business)
    assert _stripe_prices(stripe_fake, subscribed.stripe_subscription_id) == _plan_prices(developer)


def test_the_gateway_translates_stripes_refusals(plans, subscribed, stripe_fake):
    from billing import stripe_gateway

    with pytest.raises(stripe_gateway.StripeRefused) as missing:
        stripe_gateway.subscription_change_plan(subscription_id="sub_nope", remove_item_ids=[],
                                                add_price_ids=["price_x"], idempotency_key="k1")
    assert missing.value.status == 404
    archived = StripePrice.objects.filter(plan=plans[1], kind="fee").first()
    stripe_gateway.price_deactivate(archived.stripe_price_id)
    with pytest.raises(stripe_gateway.StripeRefused) as inactive:
        stripe_gateway.subscription_change_plan(subscription_id=subscribed.stripe_subscription_id, remove_item_ids=[],
                                                add_price_ids=[archived.stripe_price_id], idempotency_key="k2")
    assert inactive.value.status == 400
    assert _stripe_prices(stripe_fake, subscribed.stripe_subscription_id) == _plan_prices(plans[0])


def test_a_switch_during_a_trial_prorates_nothing(owner_client, acme, stripe_fake):
    developer = paid_plan(trial_days=14, card_required=False)
    business = paid_plan(slug="business", name="Business", fee="499.00")
    subscription = subscribe(owner_client, acme, developer, stripe_fake)
    assert subscription.status == Subscription.Status.TRIALING
    response = _change(owner_client, acme, business)
    assert response.status_code == 303
    page = _text(owner_client.get(f"/t/{acme.slug}/billing/"))
    assert "your trial continues to its end" in page
    with stripe_fake.state.lock:
        assert not stripe_fake.state.invoice_items
    assert TenantQuota.objects.get(tenant=acme).plan == business
    assert Subscription.objects.get(tenant=acme).status == Subscription.Status.TRIALING
