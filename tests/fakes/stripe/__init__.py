"""A stand-in for Stripe's HTTP API that the real ``stripe`` SDK talks to, for tests and `make run`.

It covers exactly what ``billing/stripe_gateway.py`` calls — customers and tax ids, products, prices (fee and
metered, tiered), Billing Meters, meter events and their summaries, Checkout and Customer Portal sessions with
hosted pages, subscriptions and invoices (with a PDF) — with Stripe's object shapes, error shape and
``Idempotency-Key`` replay, and emits events signed with Stripe's webhook scheme. Standard library only.

``localstripe`` 1.15.10 answers 404 for prices, Checkout, the portal and Billing Meters, which is most of what we
call; hence this (docs/billing.md, "Stripe").

    with StripeFake() as fake:              # a free loopback port
        ...  # STRIPE_API_BASE=fake.base_url, STRIPE_SECRET_KEY=fake.api_key
        fake.complete_checkout(session_id)  # or POST the hosted page at session["url"]
        fake.advance(subscription_id)       # close the period: invoice usage and fee, charge the card
        payload, header = fake.signed(fake.events[-1])

From a shell: ``python -m tests.fakes.stripe --port 12111 --webhook-url URL --webhook-secret whsec_...``.

Parts: ``server`` (HTTP, API key, idempotency, faults, hosted pages, controls, webhook delivery), ``state`` (the
objects and events) built from ``catalogue`` (customers, products, prices, meters, meter events) and
``subscriptions`` (Checkout, portal, subscriptions, invoices), ``pages`` (HTML and PDF), ``forms`` (Stripe's
bracketed form encoding), ``common`` (error shape, ids, parsing).
"""

from __future__ import annotations

from tests.fakes.stripe.server import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, StripeFake, sign
from tests.fakes.stripe.state import API_VERSION, ApiError, StripeState

__all__ = ["API_VERSION", "DEFAULT_API_KEY", "DEFAULT_WEBHOOK_SECRET", "ApiError", "StripeFake", "StripeState", "sign"]
