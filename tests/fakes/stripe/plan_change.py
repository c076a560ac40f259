"""Changing a running subscription's prices (``POST /v1/subscriptions/{id}`` with ``items``), Stripe's proration
of the licensed fee, the usage so far of a removed metered price (flexible billing mode), and
``POST /v1/subscriptions/{id}/migrate``. A mixin placed before ``Subscriptions``: its ``subscription_update``
handles ``items`` and hands the rest on."""

from __future__ import annotations

import copy
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tests.fakes.stripe.common import GST_RATE, cents, invalid, missing, new_id
from tests.fakes.stripe.forms import as_bool

PRORATION_BEHAVIOURS = ("create_prorations", "none", "always_invoice")


class PlanChanges:
    """Attributes used are StripeState's; ``invoice_items`` holds the pending and invoiced invoice items."""

    def _billing_mode(self, sub: dict) -> str:
        return (sub.get("billing_mode") or {}).get("type") or "classic"

    def subscription_migrate(self, subscription_id: str, params: dict) -> dict:
        sub = self.subscription(subscription_id)
        wanted = ((params.get("billing_mode") or {}).get("type")) or ""
        if wanted != "flexible":
            raise invalid("billing_mode[type] must be flexible.", "billing_mode[type]")
        if self._billing_mode(sub) == "flexible":
            raise invalid("This subscription is already in flexible billing mode.", "billing_mode")
        sub["billing_mode"] = {"type": "flexible", "updated_at": self.now()}
        return sub

    def subscription_update(self, subscription_id: str, params: dict) -> dict:
        raw_items = params.get("items")
        if raw_items is None:
            return super().subscription_update(subscription_id, params)  # type: ignore[misc]
        sub = self.subscription(subscription_id)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise invalid("A canceled subscription can only update its cancellation_details and metadata.")
        behaviour = params.get("proration_behavior") or "create_prorations"
        if behaviour not in PRORATION_BEHAVIOURS:
            raise invalid(f"Invalid proration_behavior: {behaviour}", "proration_behavior")
        if not isinstance(raw_items, list):
            raise invalid("Invalid array", "items")
        current = {item["id"]: item for item in sub["items"]["data"]}
        removed: list[dict] = []
        added: list[dict] = []
        # Check everything before changing anything: Stripe applies an update whole or not at all.
        for i, entry in enumerate(raw_items):
            item_id = entry.get("id")
            if item_id:
                if item_id not in current:
                    raise missing("subscription_item", item_id, f"items[{i}][id]")
                if not as_bool(entry.get("deleted")):
                    raise invalid("The stand-in only deletes items given by id.", f"items[{i}][deleted]")
                removed.append(current[item_id])
                continue
            price = self.price(entry.get("price") or "", f"items[{i}][price]")
            if not price["active"]:
                raise invalid("The price specified is inactive. This field only accepts active prices.",
                              f"items[{i}][price]")
            if price["type"] != "recurring" or price["currency"] != sub["currency"]:
                raise invalid("The price must be recurring and in the subscription's currency.", f"items[{i}][price]")
            added.append(price)
        kept = [item for item in sub["items"]["data"] if item not in removed]
        prices = [item["price"]["id"] for item in kept] + [price["id"] for price in added]
        if len(set(prices)) != len(prices):
            raise invalid("Cannot add multiple subscription items with the same price.", "items")
        if not prices:
            raise invalid("A subscription needs at least one item.", "items")
        now = self.now()
        start, end = self._period(sub)
        previous: dict[str, Any] = {"items": copy.deepcopy(sub["items"])}
        # A trial is free: nothing to credit or charge for its fee, and its usage is not billed.
        if behaviour != "none" and sub["status"] != "trialing":
            for item in removed:
                self._removal_invoice_item(sub, item, start, end, now)
            for price in added:
                if price["recurring"]["usage_type"] != "metered":
                    self._proration_item(sub, price, 1, start, end, now, credit=False)
        new_items = [
            {
                "id": new_id("si_", 14),
                "object": "subscription_item",
                "created": now,
                "current_period_end": end,
                "current_period_start": start,
                "discounts": [],
                "metadata": {},
                "price": copy.deepcopy(price),
                "quantity": None if price["recurring"]["usage_type"] == "metered" else 1,
                "subscription": sub["id"],
                "tax_rates": [],
            }
            for price in added
        ]
        sub["items"]["data"] = kept + new_items
        sub["items"]["total_count"] = len(sub["items"]["data"])
        self.emit("customer.subscription.updated", sub, previous)
        return sub

    def _removal_invoice_item(self, sub: dict, item: dict, start: int, end: int, now: int) -> None:
        price = self.prices[item["price"]["id"]]
        if price["recurring"]["usage_type"] != "metered":
            self._proration_item(sub, price, item["quantity"] or 1, start, end, now, credit=True)
            return
        if self._billing_mode(sub) != "flexible":
            return  # classic mode: usage so far on a removed metered price is never billed (Stripe's documented gap)
        meter = price["recurring"]["meter"]
        since = max(start, item["created"], self._usage_billed_until.get((meter, sub["customer"]), 0))
        quantity = max(0, self.usage(meter, sub["customer"], since, now + 1))
        self._usage_billed_until[(meter, sub["customer"])] = now + 1
        self._invoice_item_add(sub, price, quantity, cents(self._line_amount(price, quantity)), (since, now + 1),
                               f"{quantity} x {self.products[price['product']]['name']} (usage until the change)",
                               proration=True, item=item)

    def _proration_item(self, sub: dict, price: dict, quantity: int, start: int, end: int, now: int, *,
                        credit: bool) -> None:
        """The fee for the rest of the period (``now`` to ``end``) pro rata to the second: a credit for a removed
        price, a charge for an added one."""
        share = Decimal(max(0, end - now)) / Decimal(max(1, end - start))
        amount = int((Decimal(price["unit_amount"] or 0) * quantity * share).quantize(Decimal(1), ROUND_HALF_UP))
        name = self.products[price["product"]]["name"]
        label = f"Unused time on {name} after the change" if credit else f"Remaining time on {name} after the change"
        self._invoice_item_add(sub, price, quantity, -amount if credit else amount, (now, end), label, proration=True)

    def _invoice_item_add(self, sub: dict, price: dict, quantity: int, amount: int, period: tuple[int, int],
                          description: str, *, proration: bool, item: dict | None = None) -> dict:
        invoice_item = {
            "id": new_id("ii_"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": price["currency"],
            "customer": sub["customer"],
            "date": self.now(),
            "description": description,
            "invoice": None,
            "livemode": False,
            "metadata": {},
            "parent": {"subscription_details": {"subscription": sub["id"],
                                                "subscription_item": item["id"] if item else None},
                       "type": "subscription_details"},
            "period": {"start": period[0], "end": period[1]},
            "pricing": {"price_details": {"price": price["id"], "product": price["product"]}, "type": "price_details"},
            "proration": proration,
            "quantity": quantity,
        }
        self.invoice_items[invoice_item["id"]] = invoice_item
        return invoice_item

    def usage(self, meter_id: str, customer_id: str, start: int, end: int) -> int:
        # Usage already billed when its metered price was removed is not billed again by the price that replaced it.
        start = max(start, self._usage_billed_until.get((meter_id, customer_id), 0))
        return super().usage(meter_id, customer_id, start, end) if end > start else 0  # type: ignore[misc]

    def _invoice_create(self, sub: dict, reason: str, **kwargs: Any) -> dict:
        """The subscription's invoice, plus its pending invoice items (prorations, usage until a change)."""
        invoice = super()._invoice_create(sub, reason, **kwargs)  # type: ignore[misc]
        pending = [ii for ii in self.invoice_items.values()
                   if ii["invoice"] is None and ii["parent"]["subscription_details"]["subscription"] == sub["id"]]
        if not pending:
            return invoice
        taxed = bool(invoice["total_taxes"])
        lines = self._invoice_lines[invoice["id"]]
        for ii in pending:
            ii["invoice"] = invoice["id"]
            tax = cents(Decimal(ii["amount"]) * GST_RATE) if taxed else 0
            lines.append({
                "id": new_id("il_"), "object": "line_item", "amount": ii["amount"], "currency": ii["currency"],
                "description": ii["description"], "invoice": invoice["id"], "livemode": False, "metadata": {},
                "parent": {"invoice_item_details": {"invoice_item": ii["id"], "proration": ii["proration"],
                                                    "subscription": sub["id"]},
                           "subscription_item_details": None, "type": "invoice_item_details"},
                "period": dict(ii["period"]), "pricing": {**ii["pricing"], "unit_amount_decimal": None},
                "quantity": ii["quantity"],
                "taxes": [{"amount": tax, "tax_behavior": "exclusive", "tax_rate_details": None,
                           "taxability_reason": "standard_rated", "taxable_amount": ii["amount"],
                           "type": "tax_rate_details"}] if taxed else [],
            })
        subtotal = sum(line["amount"] for line in lines)
        tax = sum(t["amount"] for line in lines for t in line["taxes"])
        total = max(0, subtotal + tax)  # a credit larger than the invoice goes to the customer's balance at Stripe
        invoice.update(subtotal=subtotal, subtotal_excluding_tax=subtotal, total_excluding_tax=subtotal,
                       total=subtotal + tax, amount_due=total, amount_remaining=total)
        if taxed:
            invoice["total_taxes"][0].update(amount=tax, taxable_amount=subtotal)
        return invoice
