"""Every call Wattle makes to Stripe, and the only module that imports the ``stripe`` SDK.

Callers get plain dicts and ids, never SDK objects or SDK exceptions. Failures come as one of:

- ``StripeUnavailable``: the network, a timeout, a 5xx, a 409 or a 429 — nothing is known to have happened; try
  again later with the same idempotency key (or meter event identifier).
- ``StripeRefused``: any other 4xx — Stripe understood and said no; retrying the same request will not help.
  ``user_message`` is safe to show a tenant; ``str()`` has Stripe's own words for logs.
- ``StripeNotConfigured``: no ``STRIPE_SECRET_KEY`` (the embedded default: payments not configured).
- ``WebhookSignatureInvalid``: a webhook body that Stripe did not sign, or signed too long ago.

What we send is an allow-list (COMPLIANCE R-REG-3): a tenant's name, billing email, ABN (as an ``au_abn`` tax id) and
our tenant id in metadata; plan names and prices; meter events carrying a Stripe customer id, a token count and a
time. Never prompts, replies, API keys, member names or anything else from usage content.

The client is built once per process for a given configuration (key, base URL, timeout, retries); a change of
those settings (tests do it) builds a new one, and ``reset_client()`` drops it outright.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import urlsplit

import stripe
from django.conf import settings

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_S = 300
# Stripe answers a meter event whose identifier it already holds with a 400 and these words (observed on the live
# API; the documentation only says identifiers are unique for at least 24 hours). It is proof of delivery.
_DUPLICATE_IDENTIFIER = "An event already exists with identifier"
_ABN_DIGITS = re.compile(r"^\d{11}$")


class StripeError(Exception):
    """Base of everything this module raises."""


class StripeNotConfigured(StripeError):
    """``STRIPE_SECRET_KEY`` is empty: payments are not configured in this installation."""


class StripeUnavailable(StripeError):
    """Stripe could not be reached or did not answer usefully (network, timeout, 5xx, 409, 429): retry later."""


class StripeRefused(StripeError):
    """Stripe answered with a 4xx other than 409/429: the request as sent will not succeed."""

    def __init__(
        self,
        user_message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        action: str = "",
        stripe_message: str = "",
    ) -> None:
        # Stripe's own message can echo what was sent (an email address): it stays out of str(), which gets logged.
        super().__init__(f"Stripe refused {action or 'the request'} (status={status}, code={code}, param={param})")
        self.user_message = user_message
        self.status = status
        self.code = code
        self.param = param
        self.stripe_message = stripe_message


class WebhookSignatureInvalid(StripeError):
    """A webhook request that is unsigned, forged, stale (> 300 s) or malformed."""


# --- the client ---------------------------------------------------------------------------------------------------
_lock = threading.Lock()
_cached: tuple[tuple, stripe.StripeClient] | None = None
# A price's meter never changes once the price exists, so it is safe to remember for the life of the process.
_price_meters: dict[str, str | None] = {}


def configured() -> bool:
    """Whether payments are configured (a Stripe secret key is set)."""
    return bool(settings.STRIPE_SECRET_KEY)


def hosted_page_origins() -> list[str]:
    """Where our Checkout and Portal buttons lead: the console's forms post to us and we redirect there, which a
    browser allows only if the page's CSP ``form-action`` names these origins. Empty while payments are off."""
    if not configured():
        return []
    base = settings.STRIPE_API_BASE
    if base:
        parts = urlsplit(base)
        return [f"{parts.scheme}://{parts.netloc}"]
    return ["https://checkout.stripe.com", "https://billing.stripe.com"]


def reset_client() -> None:
    """Forget the cached client (and what it learned), so the next call reads the settings again."""
    global _cached
    with _lock:
        _cached = None
        _price_meters.clear()


def _client() -> stripe.StripeClient:
    global _cached
    if not configured():
        raise StripeNotConfigured("Payments are not configured (STRIPE_SECRET_KEY is empty).")
    config = (
        settings.STRIPE_SECRET_KEY,
        settings.STRIPE_API_BASE or "",
        float(settings.STRIPE_TIMEOUT_S),
        int(settings.STRIPE_MAX_RETRIES),
    )
    cached = _cached
    if cached is not None and cached[0] == config:
        return cached[1]
    with _lock:
        if _cached is not None and _cached[0] == config:
            return _cached[1]
        key, base, timeout, retries = config
        base_addresses: dict[str, str] = {}
        if base:
            base_addresses = {"api": base, "files": base, "connect": base, "meter_events": base}
        client = stripe.StripeClient(
            key,
            base_addresses=base_addresses,  # type: ignore[arg-type]
            max_network_retries=retries,
            # requests comes with the SDK; its timeout bounds the connect and every read of each attempt.
            http_client=stripe.RequestsClient(timeout=timeout),
        )
        if cached is not None:
            _price_meters.clear()
        _cached = (config, client)
        return client


def _refusal_message(status: int | None, code: str | None, exc: stripe.StripeError) -> str:
    if isinstance(exc, stripe.CardError) and exc.user_message:
        return str(exc.user_message)  # written by Stripe for the card holder
    if code == "tax_id_invalid":
        return "Stripe did not accept that ABN; check the 11 digits."
    if code == "email_invalid":
        return "Stripe did not accept that billing email address."
    if status in (401, 403):
        return "Payments are not available right now; our staff have been told."
    if status == 404:
        return "That billing record was not found at Stripe."
    return "Stripe could not accept this request."


def _raise_translated(action: str, exc: stripe.StripeError) -> NoReturn:
    status = exc.http_status
    request_id = exc.request_id
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or status is None or status >= 500:
        log.warning("stripe %s unavailable: %s (status=%s, request=%s)", action, type(exc).__name__, status, request_id)
        raise StripeUnavailable(f"Stripe {action}: {type(exc).__name__} (status={status})") from None
    if status in (409, 429):
        log.warning("stripe %s conflict/rate limited (status=%s, request=%s)", action, status, request_id)
        raise StripeUnavailable(f"Stripe {action}: status {status}") from None
    code = exc.code
    param = getattr(exc, "param", None)
    log.warning("stripe %s refused: status=%s code=%s param=%s request=%s", action, status, code, param, request_id)
    if status in (401, 403):
        log.error("stripe rejected our API key (status=%s): check STRIPE_SECRET_KEY", status)
    raise StripeRefused(
        _refusal_message(status, code, exc),
        status=status,
        code=code,
        param=param,
        action=action,
        stripe_message=str(exc.user_message or ""),
    ) from None


@contextmanager
def _calling(action: str) -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        _raise_translated(action, exc)


def _options(idempotency_key: str | None) -> dict[str, Any]:
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _id(value: Any) -> str | None:
    """An expandable field's id, whether Stripe sent the id or the object."""
    if value is None or isinstance(value, str):
        return value
    return value.get("id")


def _decimal_string(value: Decimal) -> str:
    """Stripe takes decimal amounts in cents as strings with at most 12 decimal places, never in exponent form."""
    value = Decimal(value)
    if value < 0:
        raise ValueError("a price cannot be negative")
    text = format(value.normalize(), "f")
    if "." in text and len(text.split(".", 1)[1]) > 12:
        raise ValueError(f"{value} cents has more than the 12 decimal places Stripe keeps")
    return text


# --- customers ----------------------------------------------------------------------------------------------------
def _abn_digits(abn: str) -> str:
    digits = re.sub(r"\s+", "", abn or "")
    if digits and not _ABN_DIGITS.match(digits):
        raise StripeRefused("An ABN has 11 digits.", code="tax_id_invalid", param="abn", action="a malformed ABN")
    return digits


def customer_create(*, tenant_id: str, name: str, email: str, abn: str = "", idempotency_key: str) -> str:
    """A Stripe customer for a tenant; returns its id. The ABN becomes an ``au_abn`` tax id on the customer."""
    params: dict[str, Any] = {"name": name, "email": email, "metadata": {"tenant_id": str(tenant_id)}}
    digits = _abn_digits(abn)
    if digits:
        params["tax_id_data"] = [{"type": "au_abn", "value": digits}]
    with _calling("customer create"):
        customer = _client().v1.customers.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    return customer.id


def customer_update(*, customer_id: str, name: str, email: str) -> None:
    with _calling("customer update"):
        _client().v1.customers.update(customer_id, {"name": name, "email": email})


def customer_tax_ids(customer_id: str) -> list[dict[str, Any]]:
    """The customer's tax ids (type, value, verification status), e.g. the ABN given at Checkout."""
    with _calling("customer tax ids"):
        page = _client().v1.customers.tax_ids.list(customer_id, {"limit": 100})
        items = [_plain(t) for t in page.auto_paging_iter()]
    return [
        {
            "id": t["id"],
            "type": t.get("type"),
            "value": t.get("value"),
            "verification": (t.get("verification") or {}).get("status"),
        }
        for t in items
    ]


# --- catalogue ----------------------------------------------------------------------------------------------------
def product_upsert(
    *, product_id: str | None, name: str, metadata: dict[str, str], idempotency_key: str | None = None
) -> str:
    """Create a product (``product_id`` None) or update its name and metadata; returns its id."""
    params: dict[str, Any] = {"name": name, "metadata": {str(k): str(v) for k, v in metadata.items()}}
    with _calling("product upsert"):
        if product_id:
            product = _client().v1.products.update(product_id, params)  # type: ignore[arg-type]
        else:
            product = _client().v1.products.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    return product.id


def meter_upsert(*, event_name: str, display_name: str) -> str:
    """The active meter for ``event_name`` (summing ``value`` per ``stripe_customer_id``), created if missing."""
    client = _client()
    with _calling("meter list"):
        for meter in client.v1.billing.meters.list({"status": "active", "limit": 100}).auto_paging_iter():
            if meter.event_name == event_name:
                return meter.id
    params = {
        "display_name": display_name,
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    with _calling("meter create"):
        # A meter is the one thing keyed by its event name, so the name makes a natural idempotency key.
        meter = client.v1.billing.meters.create(params, {"idempotency_key": f"meter-{event_name}"})  # type: ignore[arg-type]
    return meter.id


def price_create_fee(
    *,
    product_id: str,
    unit_amount_cents: int,
    lookup_key: str,
    nickname: str,
    idempotency_key: str | None = None,
) -> str:
    """A monthly AUD fee, tax exclusive. The lookup key moves to this price from any older one."""
    params: dict[str, Any] = {
        "product": product_id,
        "currency": settings.BILLING_CURRENCY,
        "unit_amount": int(unit_amount_cents),
        "recurring": {"interval": "month", "usage_type": "licensed"},
        "tax_behavior": "exclusive",
        "lookup_key": lookup_key,
        "transfer_lookup_key": True,
        "nickname": nickname,
    }
    with _calling("fee price create"):
        price = _client().v1.prices.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    return price.id


def price_create_metered(
    *,
    product_id: str,
    meter_id: str,
    per_token_cents: Decimal,
    included_tokens: int,
    lookup_key: str,
    nickname: str,
    idempotency_key: str | None = None,
) -> str:
    """A monthly AUD price on a meter, tax exclusive: the first ``included_tokens`` free, then ``per_token_cents``
    each (graduated tiers); a plain per-unit price when nothing is included."""
    unit = _decimal_string(per_token_cents)
    params: dict[str, Any] = {
        "product": product_id,
        "currency": settings.BILLING_CURRENCY,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
        "tax_behavior": "exclusive",
        "lookup_key": lookup_key,
        "transfer_lookup_key": True,
        "nickname": nickname,
    }
    if included_tokens > 0:
        params["billing_scheme"] = "tiered"
        params["tiers_mode"] = "graduated"
        params["tiers"] = [
            {"up_to": int(included_tokens), "unit_amount": 0},
            {"up_to": "inf", "unit_amount_decimal": unit},
        ]
    else:
        params["billing_scheme"] = "per_unit"
        params["unit_amount_decimal"] = unit
    with _calling("metered price create"):
        price = _client().v1.prices.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    return price.id


def price_by_lookup_key(lookup_key: str) -> dict[str, Any] | None:
    """The active price holding ``lookup_key`` (id, product, unit_amount, unit_amount_decimal, recurring), if any."""
    with _calling("price lookup"):
        page = _client().v1.prices.list({"lookup_keys": [lookup_key], "active": True, "limit": 1})
    if not page.data:
        return None
    price = _plain(page.data[0])
    recurring = price.get("recurring") or {}
    return {
        "id": price["id"],
        "product": _id(price.get("product")),
        "active": price.get("active"),
        "currency": price.get("currency"),
        "billing_scheme": price.get("billing_scheme"),
        "unit_amount": price.get("unit_amount"),
        "unit_amount_decimal": str(price["unit_amount_decimal"]) if price.get("unit_amount_decimal") else None,
        "meter": recurring.get("meter"),
        "usage_type": recurring.get("usage_type"),
        "tax_behavior": price.get("tax_behavior"),
    }


def price_deactivate(price_id: str) -> None:
    """Archive a price: existing subscriptions keep it, new Checkout sessions cannot use it."""
    with _calling("price deactivate"):
        _client().v1.prices.update(price_id, {"active": False})


# --- Checkout and the customer portal -----------------------------------------------------------------------------
def checkout_session_create(
    *,
    customer_id: str,
    fee_price_id: str | None,
    metered_price_ids: list[str],
    trial_days: int,
    card_required: bool,
    success_url: str,
    cancel_url: str,
    client_reference_id: str,
    idempotency_key: str,
) -> tuple[str, str]:
    """A hosted Checkout page subscribing the customer to a plan's prices; returns (session id, url).

    GST comes from Stripe Tax (``automatic_tax``) on the billing address Checkout collects; the customer may give an
    ABN (``tax_id_collection``). A trial without a card asks for no payment method and cancels the subscription at
    the trial's end if none was added by then (Stripe's documented "free trial without payment method" setup).
    """
    line_items: list[dict[str, Any]] = []
    if fee_price_id:
        line_items.append({"price": fee_price_id, "quantity": 1})
    # Metered prices take no quantity: the meter decides it.
    line_items.extend({"price": price_id} for price_id in metered_price_ids)
    if not line_items:
        raise ValueError("a Checkout session needs at least one price")
    subscription_data: dict[str, Any] = {"metadata": {"client_reference_id": client_reference_id}}
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": customer_id,
        "currency": settings.BILLING_CURRENCY,
        "line_items": line_items,
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": client_reference_id,
        "automatic_tax": {"enabled": True},
        "tax_id_collection": {"enabled": True},
        "customer_update": {"name": "auto", "address": "auto"},
        "billing_address_collection": "required",
        "subscription_data": subscription_data,
    }
    if trial_days > 0:
        subscription_data["trial_period_days"] = int(trial_days)
        if not card_required:
            params["payment_method_collection"] = "if_required"
            subscription_data["trial_settings"] = {"end_behavior": {"missing_payment_method": "cancel"}}
    with _calling("checkout session create"):
        session = _client().v1.checkout.sessions.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
    return session.id, session.url


def checkout_session_retrieve(session_id: str) -> dict[str, Any]:
    """status (open/complete/expired), payment_status, subscription and customer ids, client_reference_id."""
    with _calling("checkout session retrieve"):
        session = _plain(_client().v1.checkout.sessions.retrieve(session_id))
    return {
        "id": session["id"],
        "status": session.get("status"),
        "payment_status": session.get("payment_status"),
        "subscription": _id(session.get("subscription")),
        "customer": _id(session.get("customer")),
        "client_reference_id": session.get("client_reference_id"),
        "created": session.get("created"),
    }


def checkout_session_expire(session_id: str) -> dict[str, Any]:
    """Expire an open Checkout so it can no longer be paid; returns the session as ``checkout_session_retrieve``
    gives it. One that is no longer open (paid in another tab meanwhile) can't be expired and is returned as it is."""
    try:
        with _calling("checkout session expire"):
            _client().v1.checkout.sessions.expire(session_id)
    except StripeRefused as exc:
        if exc.status != 400:
            raise
    return checkout_session_retrieve(session_id)


def portal_session_create(*, customer_id: str, return_url: str) -> str:
    """A Customer Portal link (payment methods, invoices, cancellation); returns its url."""
    with _calling("portal session create"):
        session = _client().v1.billing_portal.sessions.create({"customer": customer_id, "return_url": return_url})
    return session.url


# --- subscriptions and invoices -----------------------------------------------------------------------------------
def _subscription_dict(sub: dict[str, Any]) -> dict[str, Any]:
    items = [
        {
            "id": item["id"],
            "price": _id(item.get("price")),
            "quantity": item.get("quantity"),
            "current_period_start": item.get("current_period_start"),
            "current_period_end": item.get("current_period_end"),
        }
        for item in (sub.get("items") or {}).get("data", [])
    ]
    # Since API 2025-03-31 the period lives on each item; older versions kept it on the subscription.
    starts = [i["current_period_start"] for i in items if i["current_period_start"] is not None]
    ends = [i["current_period_end"] for i in items if i["current_period_end"] is not None]
    return {
        "id": sub["id"],
        "customer": _id(sub.get("customer")),
        "status": sub.get("status"),
        "start_date": sub.get("start_date"),
        "current_period_start": min(starts) if starts else sub.get("current_period_start"),
        "current_period_end": max(ends) if ends else sub.get("current_period_end"),
        "trial_end": sub.get("trial_end"),
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end")),
        "cancel_at": sub.get("cancel_at"),
        "canceled_at": sub.get("canceled_at"),
        "ended_at": sub.get("ended_at"),
        "items": items,
        "latest_invoice": _id(sub.get("latest_invoice")),
        "created": sub.get("created"),
        "metadata": dict(sub.get("metadata") or {}),
    }


def subscription_item_add(*, subscription_id: str, price_id: str, idempotency_key: str) -> str:
    """Add a (metered) price to a running subscription, billing from now on (no proration); returns the item id."""
    params = {"subscription": subscription_id, "price": price_id, "proration_behavior": "none"}
    with _calling("subscription item create"):
        item = _client().v1.subscription_items.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
    return item.id


def subscription_retrieve(subscription_id: str) -> dict[str, Any]:
    """The subscription's current state, its start (``start_date``) and period as epoch ints (``items`` carry each
    price id)."""
    client = _client()
    with _calling("subscription retrieve"):
        sub = _plain(client.v1.subscriptions.retrieve(subscription_id))
        if (sub.get("items") or {}).get("has_more"):
            # The embedded list is one page; a plan with many models' prices has more items than that.
            page = client.v1.subscription_items.list({"subscription": subscription_id, "limit": 100})
            sub["items"] = {"data": [_plain(item) for item in page.auto_paging_iter()]}
    return _subscription_dict(sub)


def _invoice_summary(inv: dict[str, Any]) -> dict[str, Any]:
    taxes = inv.get("total_taxes")
    tax = sum(int(t.get("amount") or 0) for t in taxes) if taxes is not None else int(inv.get("tax") or 0)
    parent = inv.get("parent") or {}
    subscription = (parent.get("subscription_details") or {}).get("subscription") or inv.get("subscription")
    return {
        "id": inv["id"],
        "number": inv.get("number"),
        "status": inv.get("status"),
        "total": inv.get("total"),
        "subtotal": inv.get("subtotal"),
        "amount_due": inv.get("amount_due"),
        "amount_paid": inv.get("amount_paid"),
        "tax": tax,
        "currency": inv.get("currency"),
        "created": inv.get("created"),
        "period_start": inv.get("period_start"),
        "period_end": inv.get("period_end"),
        "hosted_invoice_url": inv.get("hosted_invoice_url"),
        "invoice_pdf": inv.get("invoice_pdf"),
        "subscription": _id(subscription),
        "customer": _id(inv.get("customer")),
    }


def invoices_list(*, customer_id: str, limit: int = 24) -> list[dict[str, Any]]:
    """The customer's most recent invoices, newest first."""
    with _calling("invoice list"):
        page = _client().v1.invoices.list({"customer": customer_id, "limit": max(1, min(int(limit), 100))})
    return [_invoice_summary(_plain(inv)) for inv in page.data]


def _price_meter(price_id: str | None) -> str | None:
    if not price_id:
        return None
    if price_id not in _price_meters:
        with _calling("price retrieve"):
            price = _plain(_client().v1.prices.retrieve(price_id))
        _price_meters[price_id] = (price.get("recurring") or {}).get("meter")
    return _price_meters[price_id]


def invoice_retrieve(invoice_id: str) -> dict[str, Any]:
    """An invoice with its lines: each line's price, and its meter (usage lines) or quantity."""
    client = _client()
    with _calling("invoice retrieve"):
        inv = _plain(client.v1.invoices.retrieve(invoice_id))
        lines = [
            _plain(line) for line in client.v1.invoices.line_items.list(invoice_id, {"limit": 100}).auto_paging_iter()
        ]
    summary = _invoice_summary(inv)
    summary["lines"] = []
    for line in lines:
        pricing = line.get("pricing") or {}
        price_id = _id((pricing.get("price_details") or {}).get("price")) or _id(line.get("price"))
        period = line.get("period") or {}
        taxes = line.get("taxes")
        summary["lines"].append(
            {
                "id": line["id"],
                "description": line.get("description"),
                "amount": line.get("amount"),
                "tax": sum(int(t.get("amount") or 0) for t in taxes) if taxes else 0,
                "price": price_id,
                "meter": _price_meter(price_id),
                "quantity": line.get("quantity"),
                "period_start": period.get("start"),
                "period_end": period.get("end"),
            }
        )
    return summary


# --- usage meters -------------------------------------------------------------------------------------------------
def meter_event_create(*, event_name: str, customer_id: str, value: int, timestamp: int, identifier: str) -> None:
    """Report ``value`` units for a customer at ``timestamp`` (within Stripe's last 35 days).

    Returns once Stripe holds the event: when it answers 2xx, or when it says it already holds an event with this
    ``identifier`` (a retry after a lost answer). Raises ``StripeUnavailable`` when that is unknown (send again,
    same identifier) and ``StripeRefused`` when Stripe will never take it (too old, unknown meter, bad value).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a meter event's value is a whole number")
    params: dict[str, Any] = {
        "event_name": event_name,
        "identifier": identifier,
        "timestamp": int(timestamp),
        "payload": {"stripe_customer_id": customer_id, "value": str(value)},
    }
    try:
        _client().v1.billing.meter_events.create(params)  # type: ignore[arg-type]
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 400 and _DUPLICATE_IDENTIFIER in str(exc.user_message or ""):
            log.info("stripe meter event %s was already delivered", identifier)
            return
        _raise_translated("meter event create", exc)
    except stripe.StripeError as exc:
        _raise_translated("meter event create", exc)


def meter_event_summaries(
    *, meter_id: str, customer_id: str, start: int, end: int, hourly: bool = True
) -> list[tuple[int, int, float]]:
    """What Stripe has aggregated for a customer on a meter, as (start, end, value) windows in time order; hourly
    windows need ``start`` and ``end`` on hour boundaries (UTC). Stripe aggregates asynchronously, so the latest
    events may not be in it yet."""
    if hourly and (start % 3600 or end % 3600):
        raise ValueError("hourly summaries need start and end on hour boundaries")
    params: dict[str, Any] = {"customer": customer_id, "start_time": int(start), "end_time": int(end), "limit": 100}
    if hourly:
        params["value_grouping_window"] = "hour"
    with _calling("meter event summaries"):
        page = _client().v1.billing.meters.event_summaries.list(meter_id, params)  # type: ignore[arg-type]
        rows = [(int(s.start_time), int(s.end_time), float(s.aggregated_value)) for s in page.auto_paging_iter()]
    return sorted(rows)


# --- webhooks -----------------------------------------------------------------------------------------------------
def webhook_event(payload: bytes, sig_header: str) -> dict[str, Any]:
    """The event in a webhook request body, once its ``Stripe-Signature`` proves Stripe sent it in the last 300 s."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookSignatureInvalid("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot be verified")
    try:
        stripe.WebhookSignature.verify_header(payload, sig_header, secret, WEBHOOK_TOLERANCE_S)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(str(exc).split(" Read it from", 1)[0]) from None
    except (UnicodeDecodeError, ValueError, TypeError):
        raise WebhookSignatureInvalid("the webhook body or signature header is malformed") from None
    try:
        event = json.loads(payload)
    except ValueError:
        raise WebhookSignatureInvalid("the webhook body is not JSON") from None
    if not isinstance(event, dict) or event.get("object") != "event" or not event.get("id") or not event.get("type"):
        raise WebhookSignatureInvalid("the webhook body is not a Stripe event")
    return event


def subscription_change_plan(
    *, subscription_id: str, remove_item_ids: list[str], add_price_ids: list[str], idempotency_key: str
) -> dict[str, Any]:
    """Move a running subscription to another plan's prices in one update: ``remove_item_ids`` are deleted,
    ``add_price_ids`` added (metered prices without a quantity: the meter decides it). Returns the subscription as
    ``subscription_retrieve`` gives it.

    ``create_prorations``: the unused part of the old fee is credited and the new fee charged for the rest of the
    period, both as invoice items on the next invoice (nothing is charged now, so there is no payment to wait for:
    ``pending_if_incomplete`` would not apply, and Stripe does not take ``items[deleted]`` in a pending update).

    Usage so far: a subscription in Stripe's ``flexible`` billing mode bills a removed metered price's usage up to
    the change as an invoice item; in ``classic`` mode that usage would go unbilled. So a classic subscription is
    first migrated to flexible (a one-way change Stripe allows at any time, idempotent here: one already flexible is
    left alone)."""
    if not remove_item_ids and not add_price_ids:
        raise ValueError("a plan change removes or adds at least one price")
    client = _client()
    with _calling("subscription retrieve"):
        current = _plain(client.v1.subscriptions.retrieve(subscription_id))
    if ((current.get("billing_mode") or {}).get("type") or "classic") != "flexible":
        with _calling("subscription migrate"):
            client.v1.subscriptions.migrate(
                subscription_id,
                {"billing_mode": {"type": "flexible"}},  # type: ignore[arg-type]
                {"idempotency_key": f"{idempotency_key}_migrate"},
            )
    items: list[dict[str, Any]] = [{"id": item_id, "deleted": True} for item_id in remove_item_ids]
    items.extend({"price": price_id} for price_id in add_price_ids)
    params: dict[str, Any] = {"items": items, "proration_behavior": "create_prorations"}
    with _calling("subscription change plan"):
        client.v1.subscriptions.update(subscription_id, params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
    # Re-read: the update's answer embeds one page of items, and a plan with many models has more.
    return subscription_retrieve(subscription_id)
