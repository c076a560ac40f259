"""A paying customer, in a real browser: the owner picks a plan on the billing page, pays on Stripe's Checkout
page (the stand-in, driven by the real SDK), comes back subscribed, calls the API, and sees the usage, its charts
and the projected bill on the billing page. Stripe's webhooks reach the running portal signed, as in production."""

from __future__ import annotations

import re

import httpx
import pytest

from billing.models import Subscription, UsageRollup
from billing.rollups import rollups_update
from tests.billing.stripe_helpers import MODEL, paid_plan
from tests.conftest import add_totp, ingested, sign_in
from tests.e2e.helpers import accessibility_problems

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _signed_in_context(browser, base: str, user):
    """A browser context carrying a session of ``user`` (owner, second factor set up, just re-authenticated)."""
    from django.test import Client

    client = sign_in(Client(), user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}])
    return context


def test_owner_subscribes_through_checkout_calls_the_api_and_sees_the_bill(
    browser, gateway_ready, stripe_fake, alice, acme, issue_key
):
    base = gateway_ready.base_url
    stripe_fake.webhook_url = f"{base}/billing/stripe/webhook/"
    plan = paid_plan(fee="49.00")
    add_totp(alice)
    context = _signed_in_context(browser, base, alice)
    page = context.new_page()

    # 1. Before paying: on the free default plan, the paid plan is offered.
    page.goto(f"{base}/t/{acme.slug}/billing/")
    assert page.get_by_role("heading", name="Choose a plan").is_visible()
    page.get_by_role("button", name=f"Choose {plan.name}").click()

    # 2. Stripe's hosted Checkout: the fee line and GST note, then pay.
    page.wait_for_url(f"{stripe_fake.base_url}/checkout/**")
    assert page.get_by_text("A$49.00", exact=False).first.is_visible()
    page.get_by_label("ABN (optional)").fill("51 824 753 556")
    page.get_by_role("button", name="Pay and subscribe").click()

    # 3. Back on the portal: subscribed, at once (the return page re-reads the session; webhooks follow).
    page.wait_for_url(f"{base}/t/{acme.slug}/billing/return/**")
    assert page.get_by_text(re.compile(f"subscribed to {plan.name}", re.IGNORECASE)).first.is_visible()
    subscription = Subscription.objects.get(tenant=acme)
    assert subscription.status == Subscription.Status.ACTIVE and subscription.plan == plan
    stripe_fake.wait_for_deliveries()
    assert all(d["status"] == 200 for d in stripe_fake.deliveries), stripe_fake.deliveries

    # 4. The API serves the subscribed tenant.
    key = issue_key(acme)
    for _ in range(3):
        response = httpx.post(
            f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
            json={"model": MODEL, "messages": [{"role": "user", "content": "G'day"}], "max_tokens": 8},
        )
        assert response.status_code == 200, response.text
    events = ingested(3)
    rollups_update()
    billed = sum(e.prompt_tokens + e.completion_tokens for e in events)
    rolled = sum(r.prompt_tokens + r.completion_tokens for r in UsageRollup.objects.filter(tenant=acme, period="d"))
    assert rolled == billed > 0

    # 5. The billing page: the plan, this period's usage in charts, and the projected bill.
    page.goto(f"{base}/t/{acme.slug}/billing/")
    assert page.get_by_text(plan.name, exact=False).first.is_visible()
    assert page.locator("#bill-projected").inner_text().startswith("A$")
    charts = page.locator("svg[role=img]")
    assert charts.count() >= 2
    assert page.get_by_text(f"{billed:,}", exact=False).first.is_visible() or page.get_by_text(
        str(billed), exact=False
    ).first.is_visible()
    assert not accessibility_problems(page)
    assert not [e for e in page_errors(page)]
    context.close()


def page_errors(page) -> list[str]:
    return page.evaluate("() => window.__errors || []")
