"""The stand-in's objects and what happens to them: Stripe's API operations and the lifecycle of a subscription.

Objects are plain dicts in the shape of Stripe's API version 2025-03-31 and later (periods on subscription items,
invoice lines priced through ``pricing.price_details``, taxes in ``total_taxes``). Every state change appends an
event whose ``data.object`` is a copy of the object at that moment. One lock guards everything: the server holds
it for a whole request, so requests apply one at a time, as if Stripe were a single serial database.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.fakes.stripe.catalogue import Catalogue
from tests.fakes.stripe.common import API_VERSION, ApiError, invalid, missing, new_id
from tests.fakes.stripe.plan_change import PlanChanges
from tests.fakes.stripe.subscriptions import Subscriptions

__all__ = ["API_VERSION", "ApiError", "StripeState", "invalid", "missing", "new_id"]


class StripeState(PlanChanges, Catalogue, Subscriptions):
    """Everything the stand-in holds, and every operation on it."""

    def __init__(self, *, base_url: str = "", clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.RLock()
        self.base_url = base_url
        self.clock = clock
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.customers: dict[str, dict] = {}
        self.tax_ids: dict[str, dict] = {}
        self.products: dict[str, dict] = {}
        self.prices: dict[str, dict] = {}
        self._tiers: dict[str, list[dict]] = {}
        self.meters: dict[str, dict] = {}
        self.meter_events: list[dict] = []
        self._identifiers: set[str] = set()
        # Stripe checks customers and meters of a meter event after answering; these are the ones it dropped.
        self.meter_event_errors: list[dict] = []
        self.checkout_sessions: dict[str, dict] = {}
        self._session_lines: dict[str, list[dict]] = {}
        self._session_extras: dict[str, dict] = {}
        self.portal_sessions: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.invoices: dict[str, dict] = {}
        self._invoice_lines: dict[str, list[dict]] = {}
        self.events: list[dict] = []
        self.card_declines: set[str] = set()
        self._has_card: set[str] = set()
        self._invoice_seq: dict[str, int] = {}
        self.invoice_items: dict[str, dict] = {}
        # (meter, customer): usage before this moment was billed when its metered price left a subscription.
        self._usage_billed_until: dict[tuple[str, str], int] = {}

    def now(self) -> int:
        return int(self.clock())

    # --- events -------------------------------------------------------------------------------------------------
    def emit(self, type_: str, obj: dict, previous: dict | None = None) -> dict:
        event: dict[str, Any] = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1 if self.on_event else 0,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }
        if previous:
            event["data"]["previous_attributes"] = copy.deepcopy(previous)
        self.events.append(event)
        if self.on_event:
            self.on_event(event)
        return event

    def event_get(self, event_id: str) -> dict:
        for event in self.events:
            if event["id"] == event_id:
                return event
        raise missing("event", event_id)

    def event_list(self, params: dict) -> list[dict]:
        events = [e for e in reversed(self.events) if not params.get("type") or e["type"] == params["type"]]
        return events
