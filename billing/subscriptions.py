"""Subscribing and managing (issue #11, items 2 and 4): Stripe Checkout, the Customer Portal, applying what Stripe
says a subscription is now, and the billing state the console shows.

Stripe's word is applied through ``subscription_apply`` only, always from a fresh read of the subscription (the
return page and every webhook re-read it), so events arriving late or out of order can't roll a tenant back. It
sets the tenant's plan to the subscription's (through ``billing.services.tenant_quota_set``) while the
subscription runs, moves it back to the default plan when it is cancelled in good standing, and keeps the plan
(refused) when it ended unpaid. Every change republishes the tenant's record after commit, so the data plane
follows within a second (``billing.payment_access`` has the rule).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import dateformat, timezone

from audit.services import record
from billing import meters, payment_access, stripe_gateway
from billing.limits import default_plan
from billing.models import (
    CheckoutSession,
    Invoice,
    Plan,
    PlanSwitch,
    StripePrice,
    Subscription,
    TenantQuota,
)
from billing.payment_access import ENDED, GOOD_STANDING, LIVE
from tenants.models import Tenant

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

logger = logging.getLogger("wattle.billing")

NOT_CONFIGURED = ("Payments are not configured in this installation: the console shows usage and estimated "
                  "charges, and nothing is charged.")


class BillingUnavailable(Exception):
    """What a tenant asked for can't be done now; ``str()`` says why, in words fit for the console."""


def _epoch(value: int | float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


# --- the Stripe customer ---------------------------------------------------------------------------------------
def _customer_ensure(*, tenant: Tenant, actor: AbstractBaseUser | None, request: HttpRequest | None
                     ) -> Subscription:
    """The tenant's Subscription row with a Stripe customer, created once. Stripe is called outside any
    transaction; two concurrent first Checkouts send the same idempotency key (so get the same customer, or one
    of them a retryable conflict) and the row keeps whichever is recorded first."""
    subscription, _ = Subscription.objects.get_or_create(tenant=tenant)
    if subscription.stripe_customer_id:
        return subscription
    email = tenant.billing_email or getattr(actor, "email", "") or ""
    customer_id = stripe_gateway.customer_create(
        tenant_id=str(tenant.pk), name=tenant.name, email=email, abn=tenant.abn,
        idempotency_key=f"wattle_customer_{tenant.pk}_{_digest(tenant.name, email, tenant.abn)}",
    )
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if subscription.stripe_customer_id:
            return subscription
        subscription.stripe_customer_id = customer_id
        subscription.save(update_fields=["stripe_customer_id", "updated_at"])
        record(action="billing.customer.create", actor=actor, tenant=tenant, target=subscription, request=request,
               data={"customer": customer_id})
        return subscription


# --- Checkout and the Portal ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckoutStart:
    url: str
    to_portal: bool = False  # the tenant's subscription is past due: the open invoice is paid in the Portal
    session: CheckoutSession | None = None


def checkout_plans() -> list[Plan]:
    """The plans a tenant can choose in the console: self-serve and synced to Stripe."""
    return list(Plan.objects.filter(self_serve=True).exclude(stripe_product_id="")
                .filter(stripe_prices__active=True, stripe_prices__kind=StripePrice.Kind.FEE).distinct()
                .order_by("monthly_fee_aud", "name"))


def checkout_start(*, tenant: Tenant, plan: Plan, urls: Callable[[uuid.UUID], tuple[str, str]], portal_return: str,
                   actor: AbstractBaseUser | None = None, request: HttpRequest | None = None) -> CheckoutStart:
    """Start a Stripe Checkout subscribing ``tenant`` to ``plan``; ``urls(session id)`` gives the (success, cancel)
    return URLs. A tenant whose subscription runs in good standing is refused (plans change through
    ``subscription_change_plan``); one past due is sent to the Portal to pay. Raises ``BillingUnavailable``
    (payments not configured, plan not offered, Stripe refused)."""
    if not stripe_gateway.configured():
        raise BillingUnavailable(NOT_CONFIGURED)
    if not plan.self_serve:
        raise BillingUnavailable(f"The {plan.name} plan can't be chosen in the console: contact us about it.")
    prices = list(StripePrice.objects.filter(plan=plan, active=True).order_by("kind", "model"))
    fee = next((p for p in prices if p.kind == StripePrice.Kind.FEE), None)
    if not plan.stripe_product_id or fee is None:
        raise BillingUnavailable(f"The {plan.name} plan isn't open for subscriptions yet. Please try again later.")
    _unpaid_invoices_refuse(tenant=tenant)
    try:
        subscription = _customer_ensure(tenant=tenant, actor=actor, request=request)
        if _open_checkouts_close(tenant=tenant):
            subscription.refresh_from_db()
        if subscription.stripe_subscription_id and subscription.status in GOOD_STANDING:
            # A second Checkout would be a second subscription billing the same meters: a plan change is an
            # update of the running one (``subscription_change_plan``).
            current = subscription.plan.name if subscription.plan else "a plan"
            raise BillingUnavailable(
                f"You already subscribe to {current}. To move to {plan.name}, use \"Switch to {plan.name}\" on the "
                "billing page: the change applies at once and Stripe prorates the monthly fee.")
        if subscription.stripe_subscription_id and subscription.status in LIVE:
            # Past due: the Portal is where the open invoice is paid.
            url = stripe_gateway.portal_session_create(customer_id=subscription.stripe_customer_id,
                                                       return_url=portal_return)
            return CheckoutStart(url=url, to_portal=True)
        session_id = uuid.uuid4()
        success_url, cancel_url = urls(session_id)
        # One trial per organisation: a tenant that subscribed before starts paying at once.
        trial_days = plan.trial_days if not subscription.stripe_subscription_id else 0
        stripe_session_id, url = stripe_gateway.checkout_session_create(
            customer_id=subscription.stripe_customer_id, fee_price_id=fee.stripe_price_id,
            metered_price_ids=[p.stripe_price_id for p in prices if p.kind != StripePrice.Kind.FEE],
            trial_days=trial_days, card_required=plan.trial_card_required, success_url=success_url,
            cancel_url=cancel_url, client_reference_id=str(tenant.pk), idempotency_key=f"wattle_checkout_{session_id}",
        )
    except stripe_gateway.StripeRefused as exc:
        raise BillingUnavailable(exc.user_message) from None
    except stripe_gateway.StripeUnavailable:
        raise BillingUnavailable("Stripe could not be reached. Please try again in a minute.") from None
    with transaction.atomic():
        session = CheckoutSession.objects.create(id=session_id, tenant=tenant, plan=plan,
                                                 stripe_session_id=stripe_session_id, created_by=actor)
        record(action="billing.checkout.start", actor=actor, tenant=tenant, target=session, request=request,
               data={"plan": plan.slug, "session": stripe_session_id, "trial_days": trial_days})
    return CheckoutStart(url=url, session=session)


# Stripe leaves these invoices owed when a subscription ends unpaid (``uncollectible``: written off, still owed).
UNPAID_INVOICE = ("open", "uncollectible")


def _unpaid_invoices_refuse(*, tenant: Tenant) -> None:
    """A tenant whose subscription ended unpaid must settle before subscribing again: a fresh Checkout would pay
    the new subscription's first invoice and leave the old period's fee and usage owed for ever, while lifting the
    402 (a running subscription is sent to the Portal instead, where the open invoice is paid)."""
    status = Subscription.objects.filter(tenant=tenant).values_list("status", flat=True).first()
    if status in LIVE:
        return
    if Invoice.objects.filter(tenant=tenant, status__in=UNPAID_INVOICE).exists():
        raise BillingUnavailable("An earlier subscription left an open invoice unpaid. Pay the open invoice "
                                 "(Manage billing opens Stripe's portal), then choose a plan again.")


# Stripe keeps a Checkout open for 24 hours: older ones have expired there.
CHECKOUT_OPEN_FOR = timedelta(hours=25)


def _open_checkouts_close(*, tenant: Tenant) -> bool:
    """Expire the tenant's Checkouts still open at Stripe (another tab, an abandoned page) before a new one starts:
    two paid Checkouts would be two subscriptions to the same meters, each billing every token and its fee, while
    Wattle follows one. One paid meanwhile is applied instead (the tenant then subscribes, and goes to the Portal).
    Returns whether there were any. Stripe is called outside any transaction."""
    sessions = list(CheckoutSession.objects.select_related("plan", "tenant").filter(
        tenant=tenant, status=CheckoutSession.Status.OPEN, created_at__gte=timezone.now() - CHECKOUT_OPEN_FOR,
    ).order_by("-created_at")[:10])
    for session in sessions:
        try:
            data = stripe_gateway.checkout_session_expire(session.stripe_session_id)
        except stripe_gateway.StripeRefused:
            data = {"status": CheckoutSession.Status.EXPIRED}  # Stripe doesn't know it (any more): it can't be paid
        _checkout_apply(session=session, data=data)
    return bool(sessions)


def portal_start(*, tenant: Tenant, return_url: str, actor: AbstractBaseUser | None = None,
                 request: HttpRequest | None = None) -> str:
    """A Customer Portal link for the tenant (payment methods, invoices, cancellation; not plan changes, which the
    Portal can't make for a subscription of several products and metered prices)."""
    if not stripe_gateway.configured():
        raise BillingUnavailable(NOT_CONFIGURED)
    subscription = Subscription.objects.filter(tenant=tenant).exclude(stripe_customer_id="").first()
    if subscription is None:
        raise BillingUnavailable("There is nothing to manage yet: choose a plan first.")
    try:
        url = stripe_gateway.portal_session_create(customer_id=subscription.stripe_customer_id,
                                                   return_url=return_url)
    except stripe_gateway.StripeRefused as exc:
        raise BillingUnavailable(exc.user_message) from None
    except stripe_gateway.StripeUnavailable:
        raise BillingUnavailable("Stripe could not be reached. Please try again in a minute.") from None
    with transaction.atomic():
        record(action="billing.portal.open", actor=actor, tenant=tenant, target=subscription, request=request)
    return url


def checkout_outcome(*, session: CheckoutSession) -> CheckoutSession:
    """Re-read a Checkout from Stripe and apply it: a completed one subscribes the tenant at once (the webhook,
    whenever it comes, finds nothing left to do). Raises ``stripe_gateway.StripeError`` if Stripe can't say."""
    if session.status != CheckoutSession.Status.OPEN:
        return session
    data = stripe_gateway.checkout_session_retrieve(session.stripe_session_id)
    return _checkout_apply(session=session, data=data)


def _checkout_apply(*, session: CheckoutSession, data: dict[str, Any], seen: int = 0) -> CheckoutSession:
    status = data.get("status")
    if status == CheckoutSession.Status.COMPLETE and data.get("subscription"):
        # First the subscription (its own transaction: a Stripe read), then the session.
        subscription_refresh(subscription_id=data["subscription"], seen=seen)
    if status in (CheckoutSession.Status.COMPLETE, CheckoutSession.Status.EXPIRED):
        with transaction.atomic():
            locked = CheckoutSession.objects.select_for_update().get(pk=session.pk)
            if locked.status == CheckoutSession.Status.OPEN:
                locked.status = status
                locked.completed_at = timezone.now() if status == CheckoutSession.Status.COMPLETE else None
                locked.save(update_fields=["status", "completed_at"])
                record(action=f"billing.checkout.{status}", tenant=locked.tenant, target=locked,
                       data={"plan": locked.plan.slug, "session": locked.stripe_session_id})
            session = locked
    return session


def checkout_session_event(*, stripe_session_id: str, seen: int) -> bool:
    """A ``checkout.session.*`` event: re-read the session and apply it. False if the session isn't ours."""
    session = CheckoutSession.objects.select_related("plan", "tenant").filter(
        stripe_session_id=stripe_session_id).first()
    if session is None:
        return False
    _checkout_apply(session=session, data=stripe_gateway.checkout_session_retrieve(stripe_session_id), seen=seen)
    return True


# --- changing plan ----------------------------------------------------------------------------------------------
def _fee_plans(*, plan: Plan) -> None:
    """Refuse a plan a tenant can't switch to in the console (``BillingUnavailable``)."""
    if not plan.self_serve:
        raise BillingUnavailable(f"The {plan.name} plan can't be chosen in the console: contact us about it.")
    if not plan.stripe_product_id or not StripePrice.objects.filter(
            plan=plan, active=True, kind=StripePrice.Kind.FEE).exists():
        raise BillingUnavailable(f"The {plan.name} plan isn't open for subscriptions yet. Please try again later.")


def subscription_change_plan(*, tenant: Tenant, plan: Plan, actor: AbstractBaseUser | None = None,
                             request: HttpRequest | None = None, now: datetime | None = None) -> Subscription:
    """Move the tenant's running subscription to ``plan`` through the API (Stripe's Customer Portal can't switch a
    subscription of several products and metered prices): the old plan's prices leave it, the new plan's join it,
    the fee prorated by Stripe. The result is applied at once (the tenant's plan and its published record follow
    before this returns; the webhook that follows finds nothing left to do). Raises ``BillingUnavailable`` with
    words for the console; then nothing has changed here.

    The switch is a boundary of the meter reports (``PlanSwitch``): before Stripe's update, every span of the
    tenant's usage up to it is sent (``meters.meter_reports_flush``), so the old prices are still on the
    subscription when that usage arrives and Stripe bills it at them; the rest of the switch hour is reported
    later, stamped at the switch, where the new prices bill it. If Stripe can't take those reports the switch is
    refused. ``now``: the moment of the switch (tests; the clock otherwise)."""
    if not stripe_gateway.configured():
        raise BillingUnavailable(NOT_CONFIGURED)
    _fee_plans(plan=plan)
    subscription = Subscription.objects.filter(tenant=tenant).select_related("plan").first()
    if subscription is None or not subscription.stripe_subscription_id or subscription.status not in LIVE:
        raise BillingUnavailable("You have no running subscription to change: choose a plan to subscribe.")
    if subscription.status == Subscription.Status.PAST_DUE:
        raise BillingUnavailable("A payment for your subscription is overdue. Pay the open invoice (Manage billing "
                                 "opens Stripe's portal) before changing plan.")
    if subscription.plan == plan:
        raise BillingUnavailable(f"You're already on the {plan.name} plan.")
    new_prices = list(StripePrice.objects.filter(plan=plan, active=True).values_list("stripe_price_id", flat=True))
    try:
        # A fresh read: Stripe's item ids are not kept here, and the status may have moved since the last webhook.
        current = stripe_gateway.subscription_retrieve(subscription.stripe_subscription_id)
        if current["status"] not in GOOD_STANDING:
            subscription_apply(data=current)
            raise BillingUnavailable("Your subscription is no longer in good standing; see its state above.")
        items = current.get("items") or []
        remove = sorted(item["id"] for item in items if item.get("price") not in new_prices)
        have = {item.get("price") for item in items}
        add = [price_id for price_id in new_prices if price_id not in have]
        # The same key for the same change of the same items: a double-clicked button changes the plan once.
        key = f"wattle_plan_{subscription.stripe_subscription_id}_{plan.slug}_{_digest(*remove, *add)}"
        switch = _usage_before_switch_send(tenant=tenant, now=now)
        try:
            data = stripe_gateway.subscription_change_plan(subscription_id=subscription.stripe_subscription_id,
                                                           remove_item_ids=remove, add_price_ids=add,
                                                           idempotency_key=key)
        except stripe_gateway.StripeRefused:
            # Certainly not switched: the boundary goes (what was sent before it stays in the same period, stamped
            # before it, and is counted against the whole hour from now on).
            PlanSwitch.objects.filter(pk=switch.pk).delete()
            raise
        # An update that timed out may have been applied: its boundary stays (splitting an hour billed by one plan
        # is harmless). One that was applied moves to just after Stripe's answer, to the second: Stripe bills the
        # new prices from the update on, and a part stamped before that would be billed by neither plan.
        boundary = max(switch.at, _switch_second(now))
        if boundary > switch.at:
            PlanSwitch.objects.filter(pk=switch.pk).update(at=boundary)
    except stripe_gateway.StripeRefused as exc:
        logger.warning("plan change of %s to %s refused by Stripe: %s", tenant.pk, plan.slug, exc)
        raise BillingUnavailable(f"Stripe did not accept the change of plan: {exc.user_message} Nothing was "
                                 "changed.") from None
    except stripe_gateway.StripeUnavailable:
        raise BillingUnavailable("Stripe could not be reached, so your plan was not changed. Please try again in a "
                                 "minute.") from None
    previous = subscription.plan.slug if subscription.plan else None
    with transaction.atomic():
        applied = subscription_apply(data=data)
        record(action="billing.plan.change", actor=actor, tenant=tenant, target=applied, request=request,
               data={"from": previous, "to": plan.slug, "subscription": data["id"],
                     "removed": len(remove), "added": len(add), "usage_boundary": boundary.isoformat()})
    return applied


def _switch_second(now: datetime | None) -> datetime:
    """The whole second after ``now``: the usage of the current second still goes with the old prices (Stripe
    timestamps are whole seconds, and a removed price bills its usage through the second of the change)."""
    return (now or timezone.now()).replace(microsecond=0) + timedelta(seconds=1)


def _usage_before_switch_send(*, tenant: Tenant, now: datetime | None) -> PlanSwitch:
    """Record the switch as a reporting boundary and send every unreported span of the tenant's usage before it.
    Raises ``BillingUnavailable`` if Stripe can't take them (the boundary is removed: nothing changed)."""
    switch = PlanSwitch.objects.create(tenant=tenant, at=_switch_second(now))
    try:
        meters.meter_reports_flush(tenant_id=tenant.pk, until=switch.at, now=now)
    except meters.FlushFailed as exc:
        # Not switched: the boundary goes. A part sent before it stays stamped in the same period and counts
        # against the whole hour from now on (nothing is sent twice).
        PlanSwitch.objects.filter(pk=switch.pk).delete()
        logger.warning("plan change of %s refused: usage before it could not be sent to Stripe: %s", tenant.pk, exc)
        raise BillingUnavailable("Stripe could not take your usage so far, so your plan was not changed (usage "
                                 "before a switch is billed at the old plan's prices). Please try again in a "
                                 "minute.") from None
    return switch


# --- applying a subscription ------------------------------------------------------------------------------------
def _plan_for(items: list[dict[str, Any]]) -> Plan | None:
    """The plan a subscription's prices belong to (its fee's, else any of its prices')."""
    price_ids = [item["price"] for item in items if item.get("price")]
    prices = list(StripePrice.objects.filter(stripe_price_id__in=price_ids).select_related("plan"))
    prices.sort(key=lambda p: p.kind != StripePrice.Kind.FEE)
    return prices[0].plan if prices else None


def _still_live(subscription_id: str) -> bool:
    try:
        return stripe_gateway.subscription_retrieve(subscription_id)["status"] in LIVE
    except stripe_gateway.StripeRefused:
        return False  # gone from Stripe


def subscription_refresh(*, subscription_id: str, seen: int = 0) -> Subscription | None:
    """Re-read a subscription from Stripe and apply it (raises ``stripe_gateway.StripeError`` if Stripe fails); one
    of ours that runs gets the metered prices of models priced since it was sold (``subscription_prices_complete``)."""
    data = stripe_gateway.subscription_retrieve(subscription_id)
    subscription = subscription_apply(data=data, seen=seen)
    if subscription is not None and subscription.stripe_subscription_id == data["id"]:
        subscription_prices_complete(subscription=subscription, data=data)
    return subscription


def subscription_prices_complete(*, subscription: Subscription, data: dict[str, Any]) -> list[str]:
    """Add to a running subscription its plan's metered prices for models it holds no price for (``data``: the
    subscription as ``stripe_gateway.subscription_retrieve`` gave it). Stripe bills only the prices a subscription
    holds: a model priced after the subscription was sold would be reported and never invoiced, while the console
    shows its cost. Prices it holds for a model stay as sold (a changed amount applies to new subscriptions).
    Returns the price ids added; Stripe is called outside any transaction."""
    if data.get("status") not in LIVE or subscription.plan is None:
        return []
    held_ids = [item["price"] for item in data.get("items") or [] if item.get("price")]
    held = set(StripePrice.objects.filter(stripe_price_id__in=held_ids).values_list("kind", "model"))
    missing = [price for price in StripePrice.objects.filter(plan=subscription.plan, active=True)
               .exclude(kind=StripePrice.Kind.FEE).order_by("model", "kind")
               if (price.kind, price.model) not in held and price.stripe_price_id not in held_ids]
    for price in missing:
        stripe_gateway.subscription_item_add(subscription_id=data["id"], price_id=price.stripe_price_id,
                                             idempotency_key=f"wattle_item_{data['id']}_{price.stripe_price_id}")
    if missing:
        with transaction.atomic():
            record(action="billing.subscription.prices_add", tenant=subscription.tenant, target=subscription,
                   data={"subscription": data["id"], "prices": [p.stripe_price_id for p in missing],
                         "models": sorted({p.model for p in missing})})
    return [p.stripe_price_id for p in missing]


def plan_subscriptions_complete(*, plan: Plan) -> int:
    """After a plan's sync: each running subscription to it re-read, and given the prices of newly priced models.
    Returns how many were re-read; one Stripe refuses or can't be reached is logged and left to its next webhook."""
    done = 0
    ids = list(Subscription.objects.filter(plan=plan, status__in=LIVE).exclude(stripe_subscription_id="")
               .values_list("stripe_subscription_id", flat=True))
    for subscription_id in ids:
        try:
            subscription_refresh(subscription_id=subscription_id)
            done += 1
        except stripe_gateway.StripeError as exc:
            logger.warning("subscription %s not completed with the plan's new prices: %s", subscription_id, exc)
    return done


def subscription_apply(*, data: dict[str, Any], seen: int = 0) -> Subscription | None:
    """Apply a subscription as Stripe has it now (``stripe_gateway.subscription_retrieve``'s dict). ``seen``:
    Stripe's ``created`` of the event that led here. Returns the row, or None when the customer isn't ours."""
    customer = data.get("customer") or ""
    incoming = data["status"]
    # Another running subscription of this customer while ours runs too: ask Stripe whether ours still does, before
    # any lock is taken (never call Stripe inside a transaction).
    peek = Subscription.objects.filter(stripe_customer_id=customer).values("stripe_subscription_id", "status").first()
    ours_ended = None
    if (peek is not None and peek["stripe_subscription_id"] not in ("", data["id"]) and peek["status"] in LIVE
            and incoming in LIVE):
        ours_ended = not _still_live(peek["stripe_subscription_id"])
    with transaction.atomic():
        # of=self: PostgreSQL won't lock the nullable side of the plan's outer join.
        subscription = (Subscription.objects.select_for_update(of=("self",)).select_related("tenant", "plan")
                        .filter(stripe_customer_id=customer).first())
        if subscription is None or not customer:
            logger.warning("stripe subscription %s belongs to a customer we don't know", data.get("id"))
            return None
        stored_id = subscription.stripe_subscription_id
        # News of another subscription of this customer while ours runs: an old one ending (nothing to do), or a
        # new one replacing ours if ours has in fact ended (None: not asked, as the row changed meanwhile).
        other = bool(stored_id) and stored_id != data["id"] and subscription.status in LIVE
        if other and (incoming not in LIVE or not ours_ended):
            subscription.stripe_seen = max(subscription.stripe_seen, seen)
            subscription.save(update_fields=["stripe_seen", "updated_at"])
            return subscription
        before = {"status": subscription.status, "plan": subscription.plan.slug if subscription.plan else None,
                  "subscription": stored_id}
        plan = _plan_for(data.get("items") or []) or subscription.plan
        now = timezone.now()
        if incoming == Subscription.Status.PAST_DUE:
            if subscription.status != Subscription.Status.PAST_DUE or subscription.past_due_since is None:
                subscription.past_due_since = now
        elif incoming in GOOD_STANDING:
            subscription.past_due_since = None
        subscription.stripe_subscription_id = data["id"]
        subscription.status = incoming
        subscription.plan = plan
        subscription.started_at = _epoch(data.get("start_date"))
        subscription.current_period_start = _epoch(data.get("current_period_start"))
        period_end = _epoch(data.get("current_period_end"))
        ended_at = _epoch(data.get("ended_at"))
        if incoming in ENDED and ended_at is not None and (period_end is None or ended_at < period_end):
            # Cancelled before its period's end: the period stopped there (the meter reports bill usage up to this
            # moment and nothing after it; the console's period follows).
            period_end = ended_at
        subscription.current_period_end = period_end
        subscription.trial_end = _epoch(data.get("trial_end"))
        subscription.cancel_at_period_end = bool(data.get("cancel_at_period_end"))
        subscription.stripe_seen = max(subscription.stripe_seen, seen)
        subscription.save()
        tenant = subscription.tenant
        plan_change = _tenant_plan_follows(subscription=subscription, previous_status=before["status"])
        after = {"status": incoming, "plan": plan.slug if plan else None, "subscription": data["id"]}
        if after != before or plan_change:
            record(action="billing.subscription.update", tenant=tenant, target=subscription,
                   data={"before": before, "after": after, "tenant_plan": plan_change})
        transaction.on_commit(lambda: _after_change(tenant.pk), robust=True)
        return subscription


def _tenant_plan_follows(*, subscription: Subscription, previous_status: str) -> str | None:
    """Put the tenant on the subscription's plan while it runs; back on the default plan when it was cancelled in
    good standing. One that ended unpaid keeps its plan (and stays refused). Returns the change made, if any."""
    quota = TenantQuota.objects.filter(tenant=subscription.tenant).select_related("plan").first()
    current = quota.plan if quota is not None else None
    status = subscription.status
    from billing.services import tenant_quota_set

    if status in LIVE and subscription.plan is not None and current != subscription.plan:
        tenant_quota_set(tenant=subscription.tenant, plan=subscription.plan)
        return subscription.plan.slug
    # Only on the transition from good standing: a cancelled subscription read again (a late event) that had
    # ended unpaid must not move its tenant off the plan it is refused on.
    ended = status in (Subscription.Status.CANCELED, Subscription.Status.INCOMPLETE_EXPIRED)
    if ended and previous_status in GOOD_STANDING and current is not None and current == subscription.plan:
        tenant_quota_set(tenant=subscription.tenant, plan=None)  # follows the default plan again
        fallback = default_plan()
        return fallback.slug if fallback else "default"
    return None


def _after_change(tenant_id) -> None:
    """After a subscription change commits: republish the tenant (its access follows at once) and send any
    payment notice now due."""
    from billing import snapshot
    from billing.payment_notices import payment_notices_send

    snapshot.publish_tenants([tenant_id])
    payment_notices_send(tenant_ids=[tenant_id])


# --- tax ids and invoices ---------------------------------------------------------------------------------------
_ABN = re.compile(r"^\d{11}$")


def customer_tax_ids_refresh(*, customer_id: str, seen: int = 0) -> Subscription | None:
    """Re-read the customer's tax ids (an ABN given at Checkout or in the Portal) and keep them; an Australian
    ABN also becomes the tenant's (through tenants' own service, audited there)."""
    tax_ids = stripe_gateway.customer_tax_ids(customer_id)
    from tenants.services import tenant_update

    with transaction.atomic():
        subscription = (Subscription.objects.select_for_update(of=("self",)).select_related("tenant")
                        .filter(stripe_customer_id=customer_id).first())
        if subscription is None:
            return None
        kept = [{"type": t.get("type"), "value": t.get("value"), "verification": t.get("verification")}
                for t in tax_ids]
        if kept != subscription.tax_ids:
            # Not ``stripe_seen``: that says how new the subscription as last re-read is, and this didn't re-read it
            # (a subscription change waiting for Stripe would otherwise pass for applied).
            subscription.tax_ids = kept
            subscription.save(update_fields=["tax_ids", "updated_at"])
            record(action="billing.customer.tax_ids", tenant=subscription.tenant, target=subscription,
                   data={"types": sorted({t["type"] or "" for t in kept})})
        abn = next((re.sub(r"\D", "", t["value"] or "") for t in kept if t["type"] == "au_abn"), "")
        if _ABN.match(abn) and abn != subscription.tenant.abn:
            tenant_update(tenant=subscription.tenant, abn=abn)
        return subscription


def invoice_refresh(*, invoice_id: str, seen: int = 0) -> Invoice | None:
    """Re-read an invoice from Stripe and keep it (the console lists invoices from this table)."""
    data = stripe_gateway.invoice_retrieve(invoice_id)
    tenant = Tenant.objects.filter(subscription__stripe_customer_id=data.get("customer") or "x").first()
    if tenant is None:
        return None
    # Each line's own period too: a usage line bills the period it names (the staff reconciliation reads it).
    lines = [{"price": line.get("price"), "meter": line.get("meter"), "quantity": line.get("quantity"),
              "amount": line.get("amount"), "description": (line.get("description") or "")[:200],
              "period_start": line.get("period_start"), "period_end": line.get("period_end")}
             for line in data.get("lines") or []]
    with transaction.atomic():
        invoice, created = Invoice.objects.select_for_update().get_or_create(
            stripe_invoice_id=data["id"],
            defaults={"tenant": tenant, "status": data.get("status") or "",
                      "created": _epoch(data.get("created")) or timezone.now()},
        )
        previous = invoice.status
        invoice.number = data.get("number") or ""
        invoice.status = data.get("status") or ""
        invoice.currency = data.get("currency") or "aud"
        invoice.subtotal_cents = int(data.get("subtotal") or 0)
        invoice.tax_cents = int(data.get("tax") or 0)
        invoice.total_cents = int(data.get("total") or 0)
        invoice.amount_due_cents = int(data.get("amount_due") or 0)
        invoice.amount_paid_cents = int(data.get("amount_paid") or 0)
        invoice.period_start = _epoch(data.get("period_start"))
        invoice.period_end = _epoch(data.get("period_end"))
        invoice.hosted_invoice_url = data.get("hosted_invoice_url") or ""
        invoice.invoice_pdf = data.get("invoice_pdf") or ""
        invoice.lines = lines
        invoice.stripe_seen = max(invoice.stripe_seen, seen)
        invoice.save()
        if created or previous != invoice.status:
            record(action="billing.invoice.update", tenant=tenant, target=invoice,
                   data={"invoice": invoice.stripe_invoice_id, "status": invoice.status,
                         "total_cents": invoice.total_cents})
    return invoice


# --- what the console shows -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BillingState:
    """A tenant's plan and subscription as the billing page and the console banner show them."""

    configured: bool
    plan: Plan | None
    subscription: Subscription | None
    status: str  # Subscription.Status value ("" when not subscribed)
    label: str
    period_start: datetime | None
    period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    grace_deadline: datetime | None  # past due: when the API stops
    refused: bool  # the API refuses the tenant now, for want of payment
    message: str  # what is going on, and what to do
    tone: str  # "info", "warning" or "error"
    can_checkout: bool  # no running subscription: a plan can be chosen
    can_manage: bool  # a Stripe customer exists: the Portal opens
    open_invoice_url: str = ""  # past due or refused: Stripe's page to pay the latest open invoice

    @property
    def banner(self) -> bool:
        """Whether every console page should carry the message (a payment is due or the API stopped)."""
        return self.status == Subscription.Status.PAST_DUE or self.refused


def _day(value: datetime | None) -> str:
    return dateformat.format(timezone.localtime(value), "j F Y") if value else ""


def _moment(value: datetime | None) -> str:
    return dateformat.format(timezone.localtime(value), "j F Y, g:i a") if value else ""


def billing_state(tenant: Tenant, *, now: datetime | None = None) -> BillingState:
    now = now or timezone.now()
    configured = stripe_gateway.configured()
    quota = TenantQuota.objects.filter(tenant=tenant).select_related("plan").first()
    plan = quota.plan if quota is not None and quota.plan is not None else default_plan()
    subscription = Subscription.objects.filter(tenant=tenant).select_related("plan").first()
    status = subscription.status if subscription is not None else Subscription.Status.NONE
    label = Subscription.Status(status).label if status in Subscription.Status.values else status
    unpaid_after = payment_access.unpaid_after(plan=plan, subscription=subscription, configured=configured)
    refused = unpaid_after is not None and unpaid_after <= now.timestamp()
    deadline = payment_access.grace_deadline(subscription) if subscription is not None else None
    name = plan.name if plan is not None else "no plan"
    tone = "info"
    if not configured:
        message = NOT_CONFIGURED
    elif status == Subscription.Status.PAST_DUE and not refused:
        tone = "warning"
        message = (f"A payment for your {name} subscription failed. Pay the open invoice or update your payment "
                   f"method by {_moment(deadline)} to keep the API working.")
    elif refused and status == Subscription.Status.PAST_DUE:
        tone = "error"
        message = (f"A payment failed and the grace period ended on {_moment(deadline)}: the API answers "
                   "402 payment_required until the open invoice is paid. Pay it from the Stripe portal; service "
                   "returns within a second of payment.")
    elif refused:
        tone = "error"
        message = (f"Your {name} plan needs a subscription in good standing, and it is "
                   f"{label.lower() if status else 'missing'}: the API answers 402 payment_required. Pay the open "
                   "invoice in the Stripe portal, then choose a plan again.")
    elif status == Subscription.Status.TRIALING:
        message = f"You're on a free trial of {name} until {_day(subscription.trial_end)}."
        if subscription.cancel_at_period_end:
            message += " It ends then."
    elif status == Subscription.Status.ACTIVE:
        message = (f"You're subscribed to {name}. "
                   + (f"It ends on {_day(subscription.current_period_end)}." if subscription.cancel_at_period_end
                      else f"The next invoice comes on {_day(subscription.current_period_end)}."))
    else:
        message = (f"You're on the {name} plan." if plan is not None else "You have no plan.") \
            + " Choose a plan to subscribe."
    open_invoice_url = ""
    if configured and (refused or status == Subscription.Status.PAST_DUE):
        open_invoice_url = (Invoice.objects.filter(tenant=tenant, status="open").exclude(hosted_invoice_url="")
                            .order_by("-created").values_list("hosted_invoice_url", flat=True).first() or "")
    return BillingState(
        open_invoice_url=open_invoice_url,
        configured=configured, plan=plan, subscription=subscription, status=status, label=label or "Not subscribed",
        period_start=subscription.current_period_start if subscription else None,
        period_end=subscription.current_period_end if subscription else None,
        trial_end=subscription.trial_end if subscription else None,
        cancel_at_period_end=bool(subscription and subscription.cancel_at_period_end),
        grace_deadline=deadline, refused=refused, message=message, tone=tone,
        can_checkout=configured and status not in LIVE,
        can_manage=configured and subscription is not None and bool(subscription.stripe_customer_id),
    )


def payment_banner(tenant: Tenant) -> BillingState | None:
    """The state to show on every console page when a payment is due or the API stopped for want of one; None
    otherwise. Usually one query (the subscription's status); the full state only when there is something to say."""
    if not stripe_gateway.configured():
        return None
    status = Subscription.objects.filter(tenant=tenant).values_list("status", flat=True).first()
    if status in GOOD_STANDING:
        return None
    if status != Subscription.Status.PAST_DUE:
        quota_plan = TenantQuota.objects.filter(tenant=tenant).values_list("plan__requires_payment", flat=True).first()
        paid = quota_plan if quota_plan is not None else bool(getattr(default_plan(), "requires_payment", False))
        if not paid:
            return None
    state = billing_state(tenant)
    return state if state.banner else None
