"""Helpers the subscription, webhook and payment-access tests share: a paid plan synced to the Stripe stand-in, a
tenant subscribed through Checkout, and posting the stand-in's events to the webhook view."""

from __future__ import annotations

from decimal import Decimal

from billing import plan_sync
from billing.models import CheckoutSession, ModelPrice, Plan, Subscription

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
WEBHOOK = "/billing/stripe/webhook/"


def paid_plan(*, slug: str = "developer", name: str = "Developer", fee: str = "49.00", trial_days: int = 0,
              card_required: bool = True, self_serve: bool = True, sync: bool = True) -> Plan:
    """A paid plan (with the model price of the simulator's model), synced to the stand-in."""
    ModelPrice.objects.update_or_create(model=MODEL, defaults={"input_per_1k_aud": Decimal("0.0002"),
                                                               "output_per_1k_aud": Decimal("0.0006")})
    plan = Plan.objects.create(slug=slug, name=name, monthly_fee_aud=Decimal(fee), included_tokens=100_000,
                               requires_payment=True, self_serve=self_serve, trial_days=trial_days,
                               trial_card_required=card_required, rpm_limit=1000, tpm_limit=1_000_000)
    if sync:
        plan_sync.plan_stripe_sync(plan=plan)
    return Plan.objects.get(pk=plan.pk)


def start_checkout(client, tenant, plan):
    """POST the checkout endpoint; returns (response, our CheckoutSession)."""
    response = client.post(f"/t/{tenant.slug}/billing/checkout/{plan.slug}/")
    return response, CheckoutSession.objects.filter(tenant=tenant).order_by("-created_at").first()


def subscribe(client, tenant, plan, fake) -> Subscription:
    """Checkout, pay on Stripe's page, come back: the tenant subscribes (as a browser would, minus the browser)."""
    response, session = start_checkout(client, tenant, plan)
    assert response.status_code == 303, response.content[:1000]
    fake.complete_checkout(session.stripe_session_id)
    page = client.get(f"/t/{tenant.slug}/billing/return/?session={session.pk}")
    assert page.status_code == 200
    return Subscription.objects.get(tenant=tenant)


def post_event(client, fake, event, **signing):
    body, header = fake.signed(event, **signing)
    return client.post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def deliver_new(client, fake, since: int) -> int:
    """Post every event the stand-in emitted since index ``since``, in order; returns the new index."""
    events = fake.events
    for event in events[since:]:
        assert post_event(client, fake, event).status_code == 200
    return len(events)
