"""Subscribe and manage: Checkout for owners and billing members (others 403, other tenants 404, anonymous to
sign-in), only self-serve synced plans, a running subscription sent to the Portal, the return page applying a
completed Checkout at once, and the pages saying so when payments are not configured."""

from __future__ import annotations

import html
import uuid

import pytest

from audit.models import AuditEntry
from billing.models import CheckoutSession, Subscription, TenantQuota
from billing.subscriptions import billing_state
from tenants.models import Role
from tests.billing.stripe_helpers import paid_plan, start_checkout, subscribe
from tests.conftest import add_totp, sign_in


def text(response) -> str:
    return html.unescape(response.content.decode())


@pytest.fixture
def billing_client(acme, member_of):
    from django.test import Client

    return sign_in(Client(), member_of(acme, Role.BILLING))


def test_owner_starts_checkout_and_is_sent_to_stripe(owner_client, acme, stripe_fake):
    plan = paid_plan(trial_days=14, card_required=False)
    response, session = start_checkout(owner_client, acme, plan)
    assert response.status_code == 303
    assert response["Location"].startswith(stripe_fake.base_url)
    assert session.plan == plan and session.status == CheckoutSession.Status.OPEN
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.stripe_customer_id.startswith("cus_")
    with stripe_fake.state.lock:
        sent = dict(stripe_fake.state.checkout_sessions[session.stripe_session_id])
        extras = dict(stripe_fake.state.checkout_extras(session.stripe_session_id))
    assert sent["automatic_tax"]["enabled"] is True and sent["tax_id_collection"]["enabled"] is True
    assert sent["customer"] == subscription.stripe_customer_id and sent["mode"] == "subscription"
    assert sent["payment_method_collection"] == "if_required" and extras["trial_days"] == 14
    assert f"/t/{acme.slug}/billing/return/?session={session.pk}" in sent["success_url"]
    assert AuditEntry.objects.filter(action="billing.checkout.start", tenant=acme).exists()


def test_the_stripe_customer_is_created_once(owner_client, acme, stripe_fake):
    plan = paid_plan()
    start_checkout(owner_client, acme, plan)
    start_checkout(owner_client, acme, plan)
    with stripe_fake.state.lock:
        assert len(stripe_fake.state.customers) == 1
    assert CheckoutSession.objects.filter(tenant=acme).count() == 2


def test_billing_member_may_start_checkout(billing_client, acme, stripe_fake):
    response, _session = start_checkout(billing_client, acme, paid_plan())
    assert response.status_code == 303


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.AGENT, Role.ADMIN])
def test_other_roles_are_refused(role, acme, member_of, stripe_fake):
    from django.test import Client

    client = sign_in(Client(), member_of(acme, role))
    plan = paid_plan()
    assert client.post(f"/t/{acme.slug}/billing/checkout/{plan.slug}/").status_code == 403
    assert client.post(f"/t/{acme.slug}/billing/portal/").status_code == 403
    assert not Subscription.objects.filter(tenant=acme).exists()


def test_another_tenants_member_gets_404(acme, bob, bluegum, stripe_fake):
    from django.test import Client

    add_totp(bob)
    client = sign_in(Client(), bob)
    plan = paid_plan()
    assert client.post(f"/t/{acme.slug}/billing/checkout/{plan.slug}/").status_code == 404
    assert client.post(f"/t/{acme.slug}/billing/portal/").status_code == 404
    session = CheckoutSession.objects.create(tenant=acme, plan=plan, stripe_session_id="cs_test_acme")
    # Bob's own tenant can't read Acme's Checkout either.
    assert client.get(f"/t/{bluegum.slug}/billing/return/?session={session.pk}").status_code == 404


def test_anonymous_is_sent_to_sign_in(client, acme, stripe_fake):
    plan = paid_plan()
    response = client.post(f"/t/{acme.slug}/billing/checkout/{plan.slug}/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_checkout_needs_post(owner_client, acme, stripe_fake):
    plan = paid_plan()
    assert owner_client.get(f"/t/{acme.slug}/billing/checkout/{plan.slug}/").status_code == 405


def test_a_plan_that_is_not_self_serve_is_refused(owner_client, acme, stripe_fake):
    plan = paid_plan(slug="enterprise", name="Enterprise", self_serve=False)
    response, session = start_checkout(owner_client, acme, plan)
    assert response.status_code == 409 and session is None
    assert "can't be chosen in the console" in text(response)


def test_a_plan_not_synced_to_stripe_is_refused(owner_client, acme, stripe_fake):
    plan = paid_plan(sync=False)
    response, session = start_checkout(owner_client, acme, plan)
    assert response.status_code == 409 and session is None
    assert "isn't open for subscriptions yet" in text(response)


def test_an_unknown_plan_is_404(owner_client, acme, stripe_fake):
    assert owner_client.post(f"/t/{acme.slug}/billing/checkout/no-such-plan/").status_code == 404


def test_without_stripe_the_pages_say_payments_are_not_configured(owner_client, acme, settings):
    settings.STRIPE_SECRET_KEY = ""
    plan = paid_plan(sync=False)
    for response in (
        owner_client.post(f"/t/{acme.slug}/billing/checkout/{plan.slug}/"),
        owner_client.post(f"/t/{acme.slug}/billing/portal/"),
        owner_client.get(f"/t/{acme.slug}/billing/return/?session={uuid.uuid4()}"),
        owner_client.get(f"/t/{acme.slug}/billing/cancelled/?session={uuid.uuid4()}"),
    ):
        assert response.status_code in (200, 409)
        assert "Payments are not configured" in text(response)
    assert billing_state(acme).configured is False


def test_return_page_applies_a_completed_checkout_at_once(owner_client, acme, stripe_fake):
    plan = paid_plan()
    _response, session = start_checkout(owner_client, acme, plan)
    stripe_fake.complete_checkout(session.stripe_session_id)
    page = owner_client.get(f"/t/{acme.slug}/billing/return/?session={session.pk}")
    assert page.status_code == 200
    assert "You're subscribed to <strong>Developer</strong>" in text(page)
    session.refresh_from_db()
    assert session.status == CheckoutSession.Status.COMPLETE and session.completed_at is not None
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == Subscription.Status.ACTIVE and subscription.plan == plan
    assert subscription.current_period_end is not None
    assert TenantQuota.objects.get(tenant=acme).plan == plan  # its limits apply now, no webhook needed
    state = billing_state(acme)
    assert state.status == "active" and not state.refused and not state.can_checkout and state.can_manage


def test_return_page_for_a_trial_without_card(owner_client, acme, stripe_fake):
    plan = paid_plan(trial_days=14, card_required=False)
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    assert subscription.status == Subscription.Status.TRIALING and subscription.trial_end is not None
    state = billing_state(acme)
    assert "free trial of Developer" in state.message and not state.refused


def test_return_page_for_an_unfinished_checkout_offers_a_retry(owner_client, acme, stripe_fake):
    plan = paid_plan()
    _response, session = start_checkout(owner_client, acme, plan)
    page = owner_client.get(f"/t/{acme.slug}/billing/return/?session={session.pk}")
    body = text(page)
    assert page.status_code == 200 and "Checkout isn't finished" in body
    assert f"/t/{acme.slug}/billing/checkout/{plan.slug}/" in body
    assert not TenantQuota.objects.filter(tenant=acme, plan=plan).exists()


def test_return_page_when_stripe_is_unreachable_says_it_will_follow(owner_client, acme, stripe_fake):
    plan = paid_plan()
    _response, session = start_checkout(owner_client, acme, plan)
    stripe_fake.fail_next("/v1/checkout/sessions", count=3, status=503)
    page = owner_client.get(f"/t/{acme.slug}/billing/return/?session={session.pk}")
    assert page.status_code == 200 and "could not be reached" in text(page)


def test_return_page_with_a_malformed_or_unknown_session_is_404(owner_client, acme, stripe_fake):
    assert owner_client.get(f"/t/{acme.slug}/billing/return/?session=not-a-uuid").status_code == 404
    assert owner_client.get(f"/t/{acme.slug}/billing/return/").status_code == 404
    assert owner_client.get(f"/t/{acme.slug}/billing/return/?session={uuid.uuid4()}").status_code == 404


def test_cancel_page_says_nothing_was_charged(owner_client, acme, stripe_fake):
    plan = paid_plan()
    _response, session = start_checkout(owner_client, acme, plan)
    page = owner_client.get(f"/t/{acme.slug}/billing/cancelled/?session={session.pk}")
    assert page.status_code == 200 and "Nothing was charged" in text(page)


def test_a_subscribed_tenant_is_pointed_at_the_plan_switch_not_a_second_checkout(owner_client, acme, stripe_fake):
    subscribe(owner_client, acme, paid_plan(), stripe_fake)
    business = paid_plan(slug="business", name="Business", fee="499.00")
    response, _session = start_checkout(owner_client, acme, business)
    assert response.status_code == 409 and 'use "Switch to Business"' in text(response)
    assert CheckoutSession.objects.filter(tenant=acme, plan=business).count() == 0


def test_portal_opens_for_a_customer_and_explains_otherwise(owner_client, acme, stripe_fake):
    response = owner_client.post(f"/t/{acme.slug}/billing/portal/")
    assert response.status_code == 409 and "choose a plan first" in text(response)
    subscribe(owner_client, acme, paid_plan(), stripe_fake)
    response = owner_client.post(f"/t/{acme.slug}/billing/portal/")
    assert response.status_code == 303 and response["Location"].startswith(f"{stripe_fake.base_url}/portal/")
    assert AuditEntry.objects.filter(action="billing.portal.open", tenant=acme).exists()


def test_a_second_subscription_gets_no_second_trial(owner_client, acme, stripe_fake):
    plan = paid_plan(trial_days=14, card_required=False)
    subscription = subscribe(owner_client, acme, plan, stripe_fake)
    stripe_fake.cancel(subscription.stripe_subscription_id)
    from billing.subscriptions import subscription_refresh

    subscription_refresh(subscription_id=subscription.stripe_subscription_id)
    _response, session = start_checkout(owner_client, acme, plan)
    with stripe_fake.state.lock:
        assert stripe_fake.state.checkout_extras(session.stripe_session_id)["trial_days"] == 0
