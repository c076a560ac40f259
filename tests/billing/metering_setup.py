"""What the metering tests share: tenants subscribed to a metered plan, with meters and customers in the Stripe
stand-in (or only in our database when a test needs no Stripe), and usage events at chosen times."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing import stripe_gateway
from billing.models import ModelPrice, Plan, StripeMeter, StripePrice, Subscription, UsageEvent
from billing.plan_sync import meter_event_name

LARGE = "mistralai/Mistral-Large-Instruct-2411"
SMALL = "mistralai/Mistral-7B-Instruct-v0.3"
MODELS = (LARGE, SMALL)


def hour_floor(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // 3600 * 3600, UTC)


@dataclass
class Metered:
    plan: Plan
    meters: dict[tuple[str, str], StripeMeter]

    def meter(self, model: str, direction: str) -> StripeMeter:
        return self.meters[(model, direction)]


def metered_plan(*, with_stripe: bool) -> Metered:
    """A plan with input and output prices for two models, and a Stripe meter for each (made in the stand-in when
    ``with_stripe``)."""
    ModelPrice.objects.update_or_create(model=LARGE, defaults={"input_per_1k_aud": Decimal("0.003"),
                                                               "output_per_1k_aud": Decimal("0.009")})
    ModelPrice.objects.update_or_create(model=SMALL, defaults={"input_per_1k_aud": Decimal("0.0002"),
                                                               "output_per_1k_aud": Decimal("0.0006")})
    plan = Plan.objects.create(slug=f"payg-{uuid.uuid4().hex[:6]}", name="Pay as you go", requires_payment=True)
    meters = {}
    for model in MODELS:
        for direction in ("input", "output"):
            event_name = meter_event_name(model, direction)
            meter_id = (stripe_gateway.meter_upsert(event_name=event_name, display_name=f"{model} {direction}")
                        if with_stripe else f"mtr_{uuid.uuid4().hex[:14]}")
            meters[(model, direction)] = StripeMeter.objects.create(
                model=model, direction=direction, event_name=event_name, stripe_meter_id=meter_id)
            StripePrice.objects.create(plan=plan, kind=direction, model=model, meter=event_name,
                                       stripe_price_id=f"price_{uuid.uuid4().hex[:14]}", amount="x aud/token")
    return Metered(plan=plan, meters=meters)


def subscribe(tenant, plan: Plan, *, since: datetime, with_stripe: bool, status: str = "active",
              period_end: datetime | None = None, started_at: datetime | None = None) -> Subscription:
    """``since``: the current period's start; ``started_at``: the subscription's (Stripe's ``start_date``), unknown
    when not given (as for rows from before it was kept)."""
    customer_id = (
        stripe_gateway.customer_create(tenant_id=str(tenant.pk), name=tenant.name, email="billing@example.com",
                                       idempotency_key=f"customer-{tenant.pk}")
        if with_stripe else f"cus_{uuid.uuid4().hex[:14]}"
    )
    subscription, _ = Subscription.objects.update_or_create(tenant=tenant, defaults={
        "plan": plan, "stripe_customer_id": customer_id, "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:14]}",
        "status": status, "started_at": started_at, "current_period_start": since,
        "current_period_end": period_end or since + timedelta(days=30),
    })
    return subscription


def add_event(tenant, at: datetime, *, model: str = LARGE, key_id: str = "keyaaaaaaaaa", prompt: int = 100,
              completion: int = 40, status: int = 200) -> UsageEvent:
    return UsageEvent.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", tenant=tenant, key_id=key_id, endpoint="chat.completions",
        model=model, status=status, prompt_tokens=prompt, completion_tokens=completion, created_at=at)


def expected_tokens(events, subscriptions: dict, meters: dict) -> dict[tuple[str, str, int], int]:
    """(customer id, event name, hour start) -> tokens, straight from usage events: what Stripe must hold."""
    totals: dict[tuple[str, str, int], int] = {}
    for e in events:
        hour = int(e.created_at.timestamp()) // 3600 * 3600
        customer = subscriptions[e.tenant_id].stripe_customer_id
        for direction, tokens in (("input", e.prompt_tokens), ("output", e.completion_tokens)):
            meter = meters.get((e.model, direction))
            if meter is None or not tokens:
                continue
            key = (customer, meter.event_name, hour)
            totals[key] = totals.get(key, 0) + tokens
    return totals
