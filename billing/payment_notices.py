"""Emails to a tenant's billing contacts (its billing email, owners and billing members) about an unpaid
subscription: once when it goes past due (with the grace deadline), once when the API stops for want of payment.
Once per past-due episode: the notice time is kept on the subscription, and a notice older than ``past_due_since``
belongs to an earlier episode. Audited.

Run after every subscription change (``billing.subscriptions``) and every minute by beat, which is what notices a
grace period ending (nothing else happens at that moment: the data plane compares the deadline itself).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import dateformat, timezone

from audit.services import record
from billing import payment_access
from billing.budget_alerts import billing_contacts
from billing.limits import default_plan
from billing.models import Subscription
from tenants.emails import send_branded_mail

logger = logging.getLogger("wattle.billing")

PAST_DUE = "past_due"
REFUSED = "refused"
_MARKER = {PAST_DUE: "past_due_notified_at", REFUSED: "refused_notified_at"}


def _due(subscription: Subscription, now: datetime, default) -> list[str]:
    since = subscription.past_due_since
    if since is None:
        return []
    due = []
    if subscription.status == Subscription.Status.PAST_DUE and not _told(subscription.past_due_notified_at, since):
        due.append(PAST_DUE)
    if not _told(subscription.refused_notified_at, since):
        quota = getattr(subscription.tenant, "quota", None)
        plan = quota.plan if quota is not None and quota.plan is not None else default
        unpaid_after = payment_access.unpaid_after(plan=plan, subscription=subscription)
        if unpaid_after is not None and unpaid_after <= now.timestamp():
            due.append(REFUSED)
    return due


def _told(at: datetime | None, since: datetime) -> bool:
    return at is not None and at >= since


def payment_notices_send(*, now: datetime | None = None, tenant_ids: list | None = None) -> int:
    """Send the notices now due (for ``tenant_ids``, or every tenant with an unpaid episode). Returns how many.
    Safe to run often and on several workers (the row lock decides who sends)."""
    if not payment_access.payments_configured():
        return 0
    now = now or timezone.now()
    default = default_plan()
    candidates = Subscription.objects.filter(past_due_since__isnull=False).select_related("tenant__quota__plan")
    if tenant_ids is not None:
        candidates = candidates.filter(tenant_id__in=tenant_ids)
    sent = 0
    for subscription in candidates:
        for kind in _due(subscription, now, default):
            sent += _notify(subscription_id=subscription.pk, kind=kind, now=now, default=default)
    return sent


@transaction.atomic
def _notify(*, subscription_id: int, kind: str, now: datetime, default) -> int:
    subscription = (Subscription.objects.select_for_update(of=("self",)).select_related("tenant__quota__plan")
                    .get(pk=subscription_id))
    if kind not in _due(subscription, now, default):
        return 0  # another worker sent it, or the subscription changed meanwhile
    setattr(subscription, _MARKER[kind], now)
    # Not updated_at: nothing the data plane reads changed.
    Subscription.objects.filter(pk=subscription.pk).update(**{_MARKER[kind]: now})
    deadline = payment_access.grace_deadline(subscription)
    record(action=f"billing.payment.{kind}_notice", tenant=subscription.tenant, target=subscription,
           data={"status": subscription.status, "deadline": deadline.isoformat() if deadline else None})
    transaction.on_commit(lambda: _send(subscription_id=subscription.pk, kind=kind, deadline=deadline))
    return 1


def _send(*, subscription_id: int, kind: str, deadline: datetime | None) -> None:
    subscription = Subscription.objects.select_related("tenant", "plan").get(pk=subscription_id)
    tenant = subscription.tenant
    recipients = billing_contacts(tenant)
    if not recipients:
        logger.warning("tenant %s has no billing contact for a %s notice", tenant.pk, kind)
        return
    link = settings.WATTLE_BASE_URL.rstrip("/") + reverse("tenant_billing", args=[tenant.slug])
    plan = subscription.plan.name if subscription.plan else "Wattle"
    when = dateformat.format(timezone.localtime(deadline), "j F Y, g:i a T") if deadline else ""
    if kind == PAST_DUE:
        subject = f"[Wattle] {tenant.name}: a payment failed"
        body = (f"A payment for {tenant.name}'s {plan} subscription failed.\n\n"
                f"The API keeps working until {when} (a grace period). Pay the open invoice or update the payment "
                f"method before then, from the Billing page of the Wattle console:\n\n{link}\n")
    else:
        subject = f"[Wattle] {tenant.name}: the API is stopped until payment"
        body = (f"{tenant.name}'s {plan} subscription is unpaid"
                + (f" and its grace period ended on {when}" if when else "")
                + ". Requests to the API are now refused with 402 payment_required.\n\n"
                f"Pay the open invoice from the Billing page of the Wattle console; the API works again within a "
                f"second of payment:\n\n{link}\n")
    send_branded_mail(subject, body, recipients)
