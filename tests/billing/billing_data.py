"""Usage rollups, plans and subscriptions for the billing console and API tests: a tenant on a Business plan
ten days into its period, with usage on two keys and two models (``billed``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import ModelPrice, Plan, Subscription, UsageEvent, UsageRollup
from billing.rollups import rollups_update
from billing.services import tenant_quota_set
from tenants import keys


@pytest.fixture
def prices(db):
    ModelPrice.objects.create(model="mistral-large", input_per_1k_aud=Decimal("0.002"),
                              output_per_1k_aud=Decimal("0.006"))
    ModelPrice.objects.create(model="mistral-7b", input_per_1k_aud=Decimal("0.0002"),
                              output_per_1k_aud=Decimal("0.0004"))


@pytest.fixture
def business(db):
    return Plan.objects.create(slug="business", name="Business", monthly_fee_aud=Decimal("99.00"),
                               included_tokens=1_000_000, self_serve=True, requires_payment=True, trial_days=14)


def rollup(tenant, at: datetime, *, key: str = "", model: str = "mistral-large", prompt: int = 0,
           completion: int = 0, cost_micro: int = 0, requests: int = 1, period: str = "h") -> UsageRollup:
    return UsageRollup.objects.create(tenant=tenant, period=period, start=at, key_id=key, model=model,
                                      requests=requests, prompt_tokens=prompt, completion_tokens=completion,
                                      cost_micro_aud=cost_micro)


def used(tenant, at: datetime, *, key: str = "", model: str = "mistral-large", prompt: int = 0,
         completion: int = 0) -> UsageEvent:
    """One served request, as the data plane records it; ``rollups_update()`` adds it to its hour and its day."""
    return UsageEvent.objects.create(request_id=uuid.uuid4().hex, tenant=tenant, key_id=key,
                                     endpoint="chat.completions", model=model, status=200, prompt_tokens=prompt,
                                     completion_tokens=completion, created_at=at)


def subscribe(tenant, plan, *, start: datetime, status: str = Subscription.Status.ACTIVE) -> Subscription:
    tenant_quota_set(tenant=tenant, plan=plan)
    return Subscription.objects.create(tenant=tenant, plan=plan, status=status, stripe_customer_id="cus_1",
                                       stripe_subscription_id="sub_1", current_period_start=start,
                                       current_period_end=start + timedelta(days=30))


def period_usage(tenant, start: datetime, key_a: str, key_b: str) -> None:
    """Three requests in the period (large: 2M in / 1.1M out; 7b: 2M in / 0.1M out), one just before it, rolled up
    by the rollup job as in production (hourly and daily buckets, rated at the prices)."""
    used(tenant, start + timedelta(hours=1), key=key_a, prompt=1_500_000, completion=400_000)
    used(tenant, start + timedelta(hours=30), key=key_b, prompt=500_000, completion=700_000)
    used(tenant, start + timedelta(hours=30), key=key_a, model="mistral-7b", prompt=2_000_000, completion=100_000)
    used(tenant, start - timedelta(minutes=1), key=key_a, prompt=9_000_000)
    rollups_update()


@pytest.fixture
def billed(acme, bluegum, business, prices, issue_key):
    """Acme on Business, ten days into a 30-day period with usage on two keys and two models; Bluegum's usage
    in the same hours must never show."""
    start = (timezone.now() - timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    subscribe(acme, business, start=start)
    key_a = keys.parse_key(issue_key(acme, name="IVR production"))[0]
    key_b = keys.parse_key(issue_key(acme, name="Chat"))[0]
    used(bluegum, start + timedelta(hours=1), model="bluegum-only-model", prompt=77_777)
    period_usage(acme, start, key_a, key_b)
    return {"start": start, "key_a": key_a, "key_b": key_b}


