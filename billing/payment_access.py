"""The one rule of when a tenant stops being served for want of payment (issue #11, item 4).

A plan with ``requires_payment`` serves only under a Stripe subscription in good standing: ``active`` and
``trialing`` serve; ``past_due`` serves until ``past_due_since`` + ``BILLING_GRACE_DAYS``; anything else (no
subscription, incomplete, cancelled unpaid, unpaid, paused) is refused at once. Plans without
``requires_payment`` (the free Trial, Internal, contract plans invoiced outside Stripe) always serve, and so does
everything while payments are not configured (no Stripe keys: the embedded default).

The snapshot publishes the result as ``TenantRecord.unpaid_after`` and the data plane compares it with its own
clock on every request; the console's banner and billing page show the same deadline from here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from billing.models import Plan, Subscription

GOOD_STANDING = frozenset({Subscription.Status.ACTIVE, Subscription.Status.TRIALING})
# A subscription in these states runs (Stripe will bill it): the tenant is on its plan.
LIVE = frozenset({Subscription.Status.ACTIVE, Subscription.Status.TRIALING, Subscription.Status.PAST_DUE})
# A subscription in these states has ended: its usage up to the end is still reported to Stripe (``billing.meters``).
ENDED = frozenset({Subscription.Status.CANCELED})
REFUSED_NOW = 0.0


def payments_configured() -> bool:
    from billing import stripe_gateway

    return stripe_gateway.configured()


def grace() -> timedelta:
    return timedelta(days=settings.BILLING_GRACE_DAYS)


def grace_deadline(subscription: Subscription) -> datetime | None:
    """When a past-due subscription's grace period ends (None unless it is past due)."""
    if subscription.status != Subscription.Status.PAST_DUE:
        return None
    since = subscription.past_due_since or subscription.updated_at
    return since + grace() if since is not None else None


def unpaid_after(*, plan: Plan | None, subscription: Subscription | None, configured: bool | None = None
                 ) -> float | None:
    """Epoch seconds from which the tenant is refused (``REFUSED_NOW``: already), or None: it is served."""
    if plan is None or not plan.requires_payment:
        return None
    if not (payments_configured() if configured is None else configured):
        return None
    status = subscription.status if subscription is not None else Subscription.Status.NONE
    if status in GOOD_STANDING:
        return None
    if status == Subscription.Status.PAST_DUE:
        deadline = grace_deadline(subscription)
        return deadline.timestamp() if deadline is not None else REFUSED_NOW
    return REFUSED_NOW
