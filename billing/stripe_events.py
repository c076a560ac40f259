"""Stripe's webhook events: stored once, processed idempotently, in any order (issue #11, item 3).

- ``event_store`` keeps each verified event under its unique id; a second delivery of the same id is a no-op.
- ``event_process`` never trusts the event's copy of an object: it re-reads the subscription, Checkout session,
  invoice or tax ids from Stripe and applies what Stripe says now, so a late or reordered event changes nothing
  (``billing.subscriptions``). When Stripe can't be reached, an event no newer than what was already applied
  (``created`` against ``stripe_seen``) is done; a newer one stays unprocessed and ``events_retry`` (beat, every
  minute) takes it up again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import record
from billing import stripe_gateway, subscriptions
from billing.models import Invoice, StripeEvent, Subscription

logger = logging.getLogger("wattle.billing")

_CHECKOUT = frozenset({"checkout.session.completed", "checkout.session.expired",
                       "checkout.session.async_payment_succeeded", "checkout.session.async_payment_failed"})
_SUBSCRIPTION = frozenset({"customer.subscription.created", "customer.subscription.updated",
                           "customer.subscription.deleted", "customer.subscription.paused",
                           "customer.subscription.resumed", "customer.subscription.trial_will_end"})
_INVOICE = frozenset({"invoice.created", "invoice.finalized", "invoice.updated", "invoice.paid",
                      "invoice.payment_failed", "invoice.payment_succeeded", "invoice.voided",
                      "invoice.marked_uncollectible"})
_TAX_ID = frozenset({"customer.tax_id.created", "customer.tax_id.updated", "customer.tax_id.deleted"})
HANDLED = _CHECKOUT | _SUBSCRIPTION | _INVOICE | _TAX_ID
RETRY_AFTER = timedelta(seconds=30)  # leave an event its first attempt before the job retries it


def _object(event: dict[str, Any]) -> dict[str, Any]:
    obj = (event.get("data") or {}).get("object")
    return obj if isinstance(obj, dict) else {}


def _id(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _customer_of(event: dict[str, Any]) -> str:
    obj = _object(event)
    if event.get("type", "").startswith("customer.") and obj.get("object") == "customer":
        return _id(obj.get("id"))
    return _id(obj.get("customer"))


def _invoice_subscription(obj: dict[str, Any]) -> str:
    parent = obj.get("parent") or {}
    return _id((parent.get("subscription_details") or {}).get("subscription") or obj.get("subscription"))


# --- receiving ------------------------------------------------------------------------------------------------
def webhook_refused(*, reason: str, request, body_bytes: int, signed: bool) -> None:
    """Audit a webhook request that failed verification (bounded data only: never the body)."""
    with transaction.atomic():
        record(action="billing.webhook.signature_failed", request=request,
               data={"reason": reason[:200], "body_bytes": body_bytes, "signature_header": signed})


def event_store(*, event: dict[str, Any]) -> tuple[StripeEvent, bool]:
    """Keep a verified event. Returns (event, stored now); False: this id was delivered before."""
    customer = _customer_of(event)
    tenant_id = (Subscription.objects.filter(stripe_customer_id=customer).values_list("tenant_id", flat=True)
                 .first() if customer else None)
    try:
        with transaction.atomic():
            stored = StripeEvent.objects.create(
                event_id=str(event["id"])[:255], type=str(event.get("type") or "")[:100],
                created=int(event.get("created") or 0), payload=event, tenant_id=tenant_id,
            )
    except IntegrityError:
        return StripeEvent.objects.get(event_id=str(event["id"])[:255]), False
    return stored, True


# --- processing -----------------------------------------------------------------------------------------------
def _dispatch(stored: StripeEvent) -> str:
    """Apply one event by re-reading what it is about. Returns a note for the record ("" when applied)."""
    event = stored.payload
    kind = stored.type
    obj = _object(event)
    seen = stored.created
    if kind in _CHECKOUT:
        return "" if subscriptions.checkout_session_event(stripe_session_id=_id(obj.get("id")), seen=seen) \
            else "not one of our Checkout sessions"
    if kind in _SUBSCRIPTION:
        applied = subscriptions.subscription_refresh(subscription_id=_id(obj.get("id")), seen=seen)
        return "" if applied is not None else "not one of our customers"
    if kind in _INVOICE:
        invoice = subscriptions.invoice_refresh(invoice_id=_id(obj.get("id")), seen=seen)
        if invoice is None:
            return "not one of our customers"
        if subscription_id := _invoice_subscription(obj):
            # A paid or failed invoice moves its subscription (past due, or back in good standing).
            subscriptions.subscription_refresh(subscription_id=subscription_id, seen=seen)
        return ""
    if kind in _TAX_ID:
        applied = subscriptions.customer_tax_ids_refresh(customer_id=_customer_of(event), seen=seen)
        return "" if applied is not None else "not one of our customers"
    return "not handled"


def _already_applied(stored: StripeEvent) -> bool:
    """Whether something at least as new as this event was applied already (so Stripe's silence costs nothing)."""
    obj = _object(stored.payload)
    if stored.type in _INVOICE:
        invoice = Invoice.objects.filter(stripe_invoice_id=_id(obj.get("id"))).first()
        return invoice is not None and invoice.stripe_seen > stored.created
    if stored.type in _TAX_ID:
        return False  # only a tax id event re-reads the tax ids: a newer one of another kind says nothing of them
    customer = _customer_of(stored.payload)
    seen = Subscription.objects.filter(stripe_customer_id=customer).values_list("stripe_seen", flat=True).first()
    # Strictly newer: events of the same second can't be ordered, so such an event waits for Stripe instead.
    return customer != "" and seen is not None and seen > stored.created


def _mark(stored: StripeEvent, *, processed: bool, note: str) -> None:
    fields = {"error": note[:500]}
    if processed:
        fields["processed_at"] = timezone.now()
    StripeEvent.objects.filter(pk=stored.pk, processed_at__isnull=True).update(**fields)


def event_process(*, event_id: str) -> bool:
    """Process a stored event (idempotent). True once it is done; False: Stripe could not be reached and the
    event is newer than what was applied, so the retry job takes it up again."""
    stored = StripeEvent.objects.filter(event_id=event_id).first()
    if stored is None or stored.processed_at is not None:
        return stored is not None
    try:
        note = _dispatch(stored) if stored.type in HANDLED else "not handled"
    except stripe_gateway.StripeUnavailable:
        if _already_applied(stored):
            _mark(stored, processed=True, note="Stripe unreachable; older than what was applied")
            return True
        _mark(stored, processed=False, note="Stripe unreachable; will retry")
        return False
    except stripe_gateway.StripeRefused as exc:
        # The object is gone from Stripe or isn't readable with our key: nothing to apply, and retrying won't help.
        logger.warning("stripe event %s (%s) could not be applied: %s", stored.event_id, stored.type, exc)
        _mark(stored, processed=True, note=f"Stripe refused the re-read: {exc.user_message}")
        return True
    _mark(stored, processed=True, note=note)
    return True


def events_retry(*, limit: int = 200) -> int:
    """Process stored events still waiting (Stripe was unreachable), oldest first. Returns how many got done."""
    cutoff = timezone.now() - RETRY_AFTER
    waiting = (StripeEvent.objects.filter(processed_at__isnull=True, received_at__lt=cutoff)
               .order_by("created", "pk").values_list("event_id", flat=True)[:limit])
    done = 0
    for event_id in list(waiting):
        if not event_process(event_id=event_id):
            break  # Stripe is still away: the next run tries again
        done += 1
    return done
