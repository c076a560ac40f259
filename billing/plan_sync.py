"""Plans in Stripe: a plan becomes a Product with a monthly fee Price, and a metered Price per Billing Meter (the
input or output tokens of each priced model) with the plan's included tokens free as a first graduated tier.

The sync is idempotent and safe to repeat or interrupt:

- Stripe prices can't change amount, so a changed amount is a new price (and the old one archived in Stripe and
  kept here inactive, so subscriptions on it still resolve to the plan); an unchanged one costs no Stripe call.
- Each price is created under a lookup key naming the plan, what it charges and the amount. A price created by a
  sync that failed before recording it is found again by that key and adopted, not created twice.
- Meters are found by their event name before one is created (``stripe_gateway.meter_upsert``).

Token prices are the plan's (``billing.pricing``: its own price for a model, else the platform's). A plan change, a
change of the plan's own prices or of a platform price re-syncs after commit (``plan_sync_later``); a failure is
kept for staff to see (the plans page) and the periodic job (``billing.tasks.sync_plans_to_stripe``) retries plans
that are out of step.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from audit.services import record
from billing import pricing, stripe_gateway
from billing.models import Plan, StripeMeter, StripePrice

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

logger = logging.getLogger("wattle.billing")

DIRECTIONS = ("input", "output")
_FAILURE_KEY = "billing:plan-sync-failure:{pk}"
_FAILURE_TTL_S = 7 * 24 * 3600


class PaymentsNotConfigured(Exception):
    """No Stripe secret key: there is nothing to sync to."""


@dataclass(frozen=True)
class _Wanted:
    kind: str
    model: str
    amount: str  # what the price charges, as recorded in StripePrice.amount
    meter: StripeMeter | None = None
    per_token_cents: Decimal = Decimal(0)
    fee_cents: int = 0


@dataclass
class SyncResult:
    plan: Plan
    product_id: str
    created: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    meters_created: list[str] = field(default_factory=list)
    # Metered prices of models the plan had no price for: running subscriptions don't hold them yet.
    new_lines: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.deactivated or self.meters_created)


# --- what the plan should have ---------------------------------------------------------------------------------
def meter_event_name(model: str, direction: str) -> str:
    """A stable, readable Stripe event name for a model's input or output tokens (a digest keeps names of models
    that differ only in punctuation apart)."""
    readable = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:60]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"wattle_tokens_{readable}_{digest}_{direction}"


def per_token_cents(per_1k_aud: Decimal) -> Decimal:
    """A$ per 1,000 tokens as cents per token (what a Stripe metered price charges per unit)."""
    return (Decimal(per_1k_aud) * 100 / 1000).normalize()


def _cents_per_token(micro_aud_per_token: Decimal) -> Decimal:
    """A resolved price (micro-A$ per token, ``billing.pricing``) as cents per token: the same amount, written
    the same way, as ``per_token_cents`` of the per-1,000 price, so platform prices keep their Stripe prices."""
    return (Decimal(micro_aud_per_token) / 10_000).normalize()


def fee_cents(plan: Plan) -> int:
    return int((plan.monthly_fee_aud * 100).to_integral_value())


def _fee_amount(plan: Plan) -> str:
    return f"{fee_cents(plan)} aud/month"


def _metered_amount(cents: Decimal, included: int) -> str:
    return f"{format(cents, 'f')} aud/token after {included}"


def _prices_wanted(plan: Plan, meters: dict[tuple[str, str], StripeMeter] | None) -> list[_Wanted]:
    """The prices the plan should have. ``meters`` None: the amounts only (no meter needed)."""
    wanted = [_Wanted(kind=StripePrice.Kind.FEE, model="", amount=_fee_amount(plan), fee_cents=fee_cents(plan))]
    prices = pricing.prices_for_plan(plan)  # the plan's own price where it has one, else the platform's
    for model in sorted(prices):
        price = prices[model]
        for direction, micro in (("input", price.input), ("output", price.output)):
            cents = _cents_per_token(micro)
            wanted.append(_Wanted(
                kind=direction, model=model, amount=_metered_amount(cents, plan.included_tokens),
                meter=meters[(model, direction)] if meters is not None else None, per_token_cents=cents,
            ))
    return wanted


def plan_out_of_step(plan: Plan) -> bool:
    """Whether the plan's Stripe prices no longer match it (a fee, included tokens or a model price changed, a
    model is new or gone): a database read, no Stripe call."""
    if not plan.stripe_product_id:
        return True
    active = {(p.kind, p.model): p.amount for p in StripePrice.objects.filter(plan=plan, active=True)}
    wanted = {(w.kind, w.model): w.amount for w in _prices_wanted(plan, None)}
    return active != wanted


def _lookup_key(plan: Plan, wanted: _Wanted) -> str:
    digest = hashlib.sha256(f"{wanted.kind}|{wanted.model}|{wanted.amount}".encode()).hexdigest()[:20]
    return f"wattle_{plan.slug}_{wanted.kind}_{digest}"


# --- the sync ---------------------------------------------------------------------------------------------------
def _meters_ensure(result: SyncResult, models: list[str]) -> dict[tuple[str, str], StripeMeter]:
    meters = {(m.model, m.direction): m for m in StripeMeter.objects.all()}
    for model in models:
        for direction in DIRECTIONS:
            if (model, direction) in meters:
                continue
            event_name = meter_event_name(model, direction)
            meter_id = stripe_gateway.meter_upsert(event_name=event_name,
                                                   display_name=f"{model} {direction} tokens"[:250])
            meter, created = StripeMeter.objects.get_or_create(
                model=model, direction=direction, defaults={"event_name": event_name, "stripe_meter_id": meter_id}
            )
            meters[(model, direction)] = meter
            if created:
                result.meters_created.append(event_name)
    return meters


def _price_create(plan: Plan, product_id: str, wanted: _Wanted, current: StripePrice | None) -> str:
    lookup_key = _lookup_key(plan, wanted)
    found = stripe_gateway.price_by_lookup_key(lookup_key)
    if found is not None and found.get("product") == product_id:
        return found["id"]  # created by an earlier sync that failed before recording it
    # Per replaced price: an amount changed and changed back within Stripe's 24 h would otherwise get the first,
    # since archived, price back from the idempotency cache.
    idempotency_key = f"{lookup_key}_{current.stripe_price_id if current is not None else 'first'}"
    label = "monthly fee" if wanted.kind == StripePrice.Kind.FEE else f"{wanted.model} {wanted.kind} tokens"
    nickname = f"{plan.name}: {label}"[:250]
    if wanted.kind == StripePrice.Kind.FEE:
        return stripe_gateway.price_create_fee(product_id=product_id, unit_amount_cents=wanted.fee_cents,
                                               lookup_key=lookup_key, nickname=nickname,
                                               idempotency_key=idempotency_key)
    return stripe_gateway.price_create_metered(
        product_id=product_id, meter_id=wanted.meter.stripe_meter_id, per_token_cents=wanted.per_token_cents,
        included_tokens=plan.included_tokens, lookup_key=lookup_key, nickname=nickname,
        idempotency_key=idempotency_key,
    )


def _price_swap(*, plan: Plan, wanted: _Wanted, price_id: str, current: StripePrice | None) -> None:
    with transaction.atomic():
        if current is not None:
            StripePrice.objects.filter(pk=current.pk).update(active=False)
        StripePrice.objects.update_or_create(
            stripe_price_id=price_id,
            defaults={"plan": plan, "kind": wanted.kind, "model": wanted.model, "amount": wanted.amount,
                      "meter": wanted.meter.event_name if wanted.meter else "", "active": True},
        )


def plan_stripe_sync(*, plan: Plan, actor: AbstractBaseUser | None = None,
                     request: HttpRequest | None = None) -> SyncResult:
    """Bring the plan's Stripe Product, Prices and Meters in step with the plan and its token prices. Audited.

    Raises ``PaymentsNotConfigured`` without Stripe keys, and ``stripe_gateway.StripeError`` when Stripe fails
    (what was done before the failure stays recorded; running it again completes it)."""
    if not stripe_gateway.configured():
        raise PaymentsNotConfigured("Payments are not configured: there is no Stripe account to sync to.")
    plan = Plan.objects.get(pk=plan.pk)
    try:
        result = _sync(plan)
    except stripe_gateway.StripeError as exc:
        _remember_failure(plan, exc)
        if actor is not None:  # staff asked; the periodic retries only log, or a long outage would flood the trail
            with transaction.atomic():
                record(action="plan.stripe_sync.failed", actor=actor, target=plan, request=request,
                       data={"slug": plan.slug, "error": type(exc).__name__})
        raise
    cache.delete(_FAILURE_KEY.format(pk=plan.pk))
    if result.new_lines:
        from billing.subscriptions import plan_subscriptions_complete

        plan_subscriptions_complete(plan=plan)  # Stripe bills a subscription only the prices it holds
    with transaction.atomic():
        record(action="plan.stripe_sync", actor=actor, target=plan, request=request,
               data={"slug": plan.slug, "product": result.product_id, "created": result.created,
                     "deactivated": result.deactivated, "meters_created": result.meters_created})
    return result


def _sync(plan: Plan) -> SyncResult:
    product_id = stripe_gateway.product_upsert(
        product_id=plan.stripe_product_id or None, name=plan.name,
        metadata={"wattle_plan": plan.slug},
        idempotency_key=f"wattle_{plan.slug}_product_{hashlib.sha256(plan.name.encode()).hexdigest()[:12]}",
    )
    if product_id != plan.stripe_product_id:
        # update(): the plan's limits didn't change, so its tenants needn't be republished (updated_at stays).
        Plan.objects.filter(pk=plan.pk).update(stripe_product_id=product_id)
        plan.stripe_product_id = product_id
    result = SyncResult(plan=plan, product_id=product_id)
    meters = _meters_ensure(result, sorted(pricing.prices_for_plan(plan)))
    active = {(p.kind, p.model): p for p in StripePrice.objects.filter(plan=plan, active=True)}
    wanted_keys = set()
    for wanted in _prices_wanted(plan, meters):
        wanted_keys.add((wanted.kind, wanted.model))
        current = active.get((wanted.kind, wanted.model))
        if current is not None and current.amount == wanted.amount:
            continue
        price_id = _price_create(plan, product_id, wanted, current)
        if current is not None and current.stripe_price_id != price_id:
            stripe_gateway.price_deactivate(current.stripe_price_id)  # before the swap: a retry archives it again
            result.deactivated.append(current.stripe_price_id)
        _price_swap(plan=plan, wanted=wanted, price_id=price_id, current=current)
        result.created.append(price_id)
        if current is None and wanted.kind != StripePrice.Kind.FEE:
            result.new_lines.append(price_id)
    for key, gone in active.items():
        if key not in wanted_keys:  # a model no longer priced
            stripe_gateway.price_deactivate(gone.stripe_price_id)
            StripePrice.objects.filter(pk=gone.pk).update(active=False)
            result.deactivated.append(gone.stripe_price_id)
    now = timezone.now()
    Plan.objects.filter(pk=plan.pk).update(synced_at=now)
    plan.synced_at = now
    if result.changed:
        logger.info("plan %s synced to Stripe: %d prices created, %d archived, %d meters created", plan.slug,
                    len(result.created), len(result.deactivated), len(result.meters_created))
    return result


# --- failures, retries ----------------------------------------------------------------------------------------
def _remember_failure(plan: Plan, exc: Exception) -> None:
    message = exc.user_message if isinstance(exc, stripe_gateway.StripeRefused) else (
        "Stripe could not be reached." if isinstance(exc, stripe_gateway.StripeUnavailable) else "The sync failed.")
    cache.set(_FAILURE_KEY.format(pk=plan.pk), {"at": timezone.now().isoformat(), "message": message},
              _FAILURE_TTL_S)
    logger.warning("plan %s: sync to Stripe failed: %s", plan.slug, exc)


def plan_sync_failure(plan: Plan) -> dict | None:
    """The last sync failure of the plan, if it hasn't synced since: {"at": iso time, "message": ...}."""
    return cache.get(_FAILURE_KEY.format(pk=plan.pk))


def plans_to_sync() -> list[Plan]:
    """Plans billed through Stripe or offered in the console (or already in Stripe) that are out of step with it."""
    plans = (Plan.objects.filter(requires_payment=True) | Plan.objects.filter(self_serve=True)
             | Plan.objects.exclude(stripe_product_id=""))
    return [plan for plan in plans.distinct() if plan_out_of_step(plan)]


def plans_sync_due() -> int:
    """Sync every plan that is out of step (the periodic job). Returns how many synced; failures are kept for
    staff and retried on the next run."""
    if not stripe_gateway.configured():
        return 0
    synced = 0
    for plan in plans_to_sync():
        try:
            plan_stripe_sync(plan=plan)
        except stripe_gateway.StripeError:
            continue
        synced += 1
    return synced


def plan_sync_later(plan_ids: list[int] | None = None) -> None:
    """After a plan or a model price change commits: re-sync those plans (None: every plan in Stripe), by a worker.
    Queued on commit (robust: a failure to queue is repaired by the periodic job)."""
    if not stripe_gateway.configured():
        return

    def queue() -> None:
        from billing.tasks import sync_plans_to_stripe

        sync_plans_to_stripe.delay(plan_ids)

    transaction.on_commit(queue, robust=True)
