"""Checkout and portal sessions, subscriptions and their lifecycle, invoices and payment."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from typing import Any

from tests.fakes.stripe.common import (
    GST_RATE,
    ApiError,
    _int,
    _metadata,
    add_month,
    cents,
    invalid,
    missing,
    new_id,
)
from tests.fakes.stripe.forms import as_bool


class Subscriptions:
    """Checkout, the portal, subscriptions and invoices; the attributes they use are StripeState's."""

    # --- Checkout and the portal --------------------------------------------------------------------------------
    def checkout_session(self, session_id: str) -> dict:
        if session_id not in self.checkout_sessions:
            raise missing("checkout.session", session_id)
        return self.checkout_sessions[session_id]

    def checkout_session_expire(self, session_id: str) -> dict:
        """Stripe's expire: only an open session can be expired (400 otherwise), and it can't be paid after."""
        session = self.checkout_session(session_id)
        if session["status"] != "open":
            raise invalid('Only Checkout Sessions with a status in ["open"] can be expired.', "session",
                          "checkout_session_not_open")
        session["status"] = "expired"
        self.emit("checkout.session.expired", session)
        return session

    def checkout_session_create(self, params: dict) -> dict:
        mode = params.get("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise invalid("Missing required param: mode.", "mode", "parameter_missing")
        if mode != "subscription":
            raise invalid("The stand-in only sells subscriptions.", "mode")
        customer_id = params.get("customer")
        if customer_id:
            self.customer(customer_id, "customer")
        if not params.get("success_url"):
            raise invalid("Missing required param: success_url.", "success_url", "parameter_missing")
        currency = (params.get("currency") or "").lower() or None
        raw_lines = params.get("line_items")
        if not isinstance(raw_lines, list) or not raw_lines:
            raise invalid("Missing required param: line_items.", "line_items", "parameter_missing")
        lines = []
        for i, line in enumerate(raw_lines):
            price = self.price(line.get("price") or "", f"line_items[{i}][price]")
            if not price["active"]:
                raise invalid(f"The price {price['id']} is not active.", f"line_items[{i}][price]")
            if price["type"] != "recurring":
                raise invalid("Subscription mode needs recurring prices.", f"line_items[{i}][price]")
            currency = currency or price["currency"]
            if price["currency"] != currency:
                raise invalid("All prices must be in the same currency.", f"line_items[{i}][price]")
            metered = price["recurring"]["usage_type"] == "metered"
            if metered and line.get("quantity") not in (None, ""):
                raise invalid(
                    "Quantity should not be specified where usage_type is `metered`.", f"line_items[{i}][quantity]"
                )
            quantity = None if metered else _int(line.get("quantity") or 1, f"line_items[{i}][quantity]")
            lines.append({"price": price["id"], "quantity": quantity})
        customer_update = params.get("customer_update") or {}
        if customer_update and not customer_id:
            raise invalid("customer_update can only be used with customer.", "customer_update")
        automatic_tax = as_bool((params.get("automatic_tax") or {}).get("enabled"))
        tax_id_collection = as_bool((params.get("tax_id_collection") or {}).get("enabled"))
        needs_address = customer_id and not self.customers[customer_id].get("address")
        if needs_address and automatic_tax and customer_update.get("address") != "auto":
            raise invalid(
                "Automatic tax calculation in Checkout requires a valid address on the Customer. Add a valid "
                "address to the Customer or set either customer_update[address] to 'auto' or "
                "customer_update[shipping] to 'auto'.",
                "automatic_tax[enabled]",
            )
        if customer_id and tax_id_collection and customer_update.get("name") != "auto":
            raise invalid(
                "tax_id_collection requires customer_update[name] to be 'auto' when an existing customer is given.",
                "tax_id_collection[enabled]",
            )
        collection = params.get("payment_method_collection") or "always"
        if collection not in ("always", "if_required"):
            raise invalid(f"Invalid payment_method_collection: {collection}", "payment_method_collection")
        subscription_data = params.get("subscription_data") or {}
        trial_days = _int(subscription_data.get("trial_period_days") or 0, "subscription_data[trial_period_days]")
        if trial_days < 0 or trial_days > 730:
            raise invalid("trial_period_days must be between 1 and 730.", "subscription_data[trial_period_days]")
        end_behavior = ((subscription_data.get("trial_settings") or {}).get("end_behavior") or {}).get(
            "missing_payment_method"
        ) or "create_invoice"
        if end_behavior not in ("cancel", "create_invoice", "pause"):
            raise invalid(
                f"Invalid missing_payment_method: {end_behavior}",
                "subscription_data[trial_settings][end_behavior][missing_payment_method]",
            )
        if collection == "if_required" and not trial_days:
            # Nothing to collect a card for later if nothing is free now: Stripe needs the card at once anyway.
            collection = "always"
        now = self.now()
        session_id = new_id("cs_test_", 58)
        amount = sum(
            (self.prices[line["price"]]["unit_amount"] or 0) * line["quantity"] for line in lines if line["quantity"]
        )
        session = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": {"enabled": automatic_tax, "liability": None, "status": None},
            "billing_address_collection": params.get("billing_address_collection") or "auto",
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": currency,
            "customer": customer_id,
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "customer_update": customer_update or None,
            "expires_at": now + 86400,
            "invoice": None,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": _metadata({}, params.get("metadata")),
            "mode": mode,
            "payment_method_collection": collection,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": params["success_url"],
            "tax_id_collection": {"enabled": tax_id_collection, "required": "never"},
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{self.base_url}/checkout/{session_id}",
        }
        self.checkout_sessions[session_id] = session
        self._session_lines[session_id] = lines
        self._session_extras[session_id] = {
            "trial_days": trial_days,
            "end_behavior": end_behavior,
            "subscription_metadata": _metadata({}, subscription_data.get("metadata")),
        }
        return session

    def checkout_lines(self, session_id: str) -> list[dict]:
        self.checkout_session(session_id)
        return [
            {
                "price": self.prices[line["price"]],
                "product": self.products[self.prices[line["price"]]["product"]],
                "quantity": line["quantity"],
            }
            for line in self._session_lines[session_id]
        ]

    def checkout_extras(self, session_id: str) -> dict:
        return self._session_extras[session_id]

    def checkout_complete(
        self,
        session_id: str,
        *,
        business_name: str = "",
        abn: str = "",
        address: dict | None = None,
        email: str = "",
    ) -> dict:
        """What paying on the hosted page does: the subscription starts, the first invoice is paid (or the trial
        starts), and the session completes. Raises ApiError(402) when the card is declined and payment is due."""
        session = self.checkout_session(session_id)
        if session["status"] != "open":
            raise invalid(f"This Checkout session is {session['status']}.", "session", "checkout_session_not_open")
        extras = self._session_extras[session_id]
        customer_id = session["customer"] or self.customer_create({"email": email or None})["id"]
        trial = extras["trial_days"] > 0
        collects_card = session["payment_method_collection"] == "always" or not trial
        if collects_card and customer_id in self.card_declines and not trial and session["amount_total"] > 0:
            raise ApiError(402, "Your card was declined.", type="card_error", code="card_declined")
        if abn:
            self._check_tax_id("au_abn", abn, "abn")
        customer = self.customers[customer_id]
        update = session["customer_update"] or {}
        if update.get("address") == "auto" or not customer.get("address"):
            self.customer_update(
                customer_id,
                {
                    "address": address
                    or {
                        "city": "Sydney",
                        "country": "AU",
                        "line1": "1 Test Street",
                        "line2": None,
                        "postal_code": "2000",
                        "state": "NSW",
                    }
                },
            )
        if business_name and update.get("name") == "auto":
            self.customer_update(customer_id, {"name": business_name})
        if abn:
            self.tax_id_set(customer_id, "au_abn", abn)
        if collects_card:
            self._has_card.add(customer_id)
            customer["invoice_settings"]["default_payment_method"] = "pm_card_" + customer_id[4:]
        sub = self._subscription_start(session, customer_id, extras)
        invoice = self.invoices[sub["latest_invoice"]]
        session.update(
            {
                "status": "complete",
                "payment_status": "paid" if invoice["amount_paid"] else "no_payment_required",
                "subscription": sub["id"],
                "customer": customer_id,
                "invoice": invoice["id"],
                "amount_total": invoice["total"],
                "total_details": {
                    "amount_discount": 0,
                    "amount_shipping": 0,
                    "amount_tax": invoice["total"] - invoice["subtotal"],
                },
                "automatic_tax": {**session["automatic_tax"], "status": "complete"},
                "customer_details": {
                    "address": customer["address"],
                    "email": customer["email"],
                    "name": customer["name"],
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [{"type": "au_abn", "value": re.sub(r"\s+", "", abn)}] if abn else [],
                },
            }
        )
        self.emit("checkout.session.completed", session)
        return sub

    def portal_session_create(self, params: dict) -> dict:
        customer_id = params.get("customer") or ""
        self.customer(customer_id, "customer")
        session_id = new_id("bps_")
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": "bpc_" + customer_id[4:],
            "created": self.now(),
            "customer": customer_id,
            "flow": None,
            "livemode": False,
            "locale": params.get("locale"),
            "on_behalf_of": None,
            "return_url": params.get("return_url"),
            "url": f"{self.base_url}/portal/{session_id}",
        }
        self.portal_sessions[session_id] = session
        return session

    def portal_session(self, session_id: str) -> dict:
        if session_id not in self.portal_sessions:
            raise missing("billing_portal.session", session_id)
        return self.portal_sessions[session_id]

    # --- subscriptions ------------------------------------------------------------------------------------------
    def subscription(self, subscription_id: str, param: str = "id") -> dict:
        if subscription_id not in self.subscriptions:
            raise missing("subscription", subscription_id, param)
        return self.subscriptions[subscription_id]

    def _subscription_start(self, session: dict, customer_id: str, extras: dict) -> dict:
        now = self.now()
        trial_days = extras["trial_days"]
        trial_end = now + trial_days * 86400 if trial_days else None
        period_end = trial_end or add_month(now)
        sub_id = new_id("sub_")
        items = [
            {
                "id": new_id("si_", 14),
                "object": "subscription_item",
                "created": now,
                "current_period_end": period_end,
                "current_period_start": now,
                "discounts": [],
                "metadata": {},
                "price": copy.deepcopy(self.prices[line["price"]]),
                "quantity": line["quantity"],
                "subscription": sub_id,
                "tax_rates": [],
            }
            for line in self._session_lines[session["id"]]
        ]
        sub = {
            "id": sub_id,
            "object": "subscription",
            "application": None,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": session["automatic_tax"]["enabled"],
                "liability": None,
            },
            "billing_cycle_anchor": period_end if trial_end else now,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": session["currency"],
            "customer": customer_id,
            "default_payment_method": self.customers[customer_id]["invoice_settings"]["default_payment_method"],
            "description": None,
            "discounts": [],
            "ended_at": None,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": dict(extras["subscription_metadata"]),
            "pause_collection": None,
            "start_date": now,
            "status": "trialing" if trial_end else "active",
            "trial_end": trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": extras["end_behavior"]}},
            "trial_start": now if trial_end else None,
        }
        self.subscriptions[sub_id] = sub
        invoice = self._invoice_create(
            sub, "subscription_create", fee_period=(now, period_end), usage_period=None, free=bool(trial_end)
        )
        sub["latest_invoice"] = invoice["id"]
        self.emit("customer.subscription.created", sub)
        self._invoice_collect(invoice, sub)
        return sub

    def subscription_view(self, sub: dict) -> dict:
        """A subscription as the API answers it: its items embedded as one page of up to 10."""
        view = copy.deepcopy(sub)
        items = sub["items"]["data"]
        view["items"]["data"] = view["items"]["data"][:10]
        view["items"]["has_more"] = len(items) > 10
        return view

    def subscription_items(self, params: dict) -> list[dict]:
        subscription_id = params.get("subscription") or ""
        if not subscription_id:
            raise invalid("Missing required param: subscription.", "subscription", "parameter_missing")
        return self.subscription(subscription_id, "subscription")["items"]["data"]

    def subscription_item_create(self, params: dict) -> dict:
        """Add a price to a running subscription (``proration_behavior`` none: a metered price bills from now)."""
        sub = self.subscription(params.get("subscription") or "", "subscription")
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise invalid("A canceled subscription can't get new items.", "subscription")
        price_id = params.get("price") or ""
        if price_id not in self.prices:
            raise missing("price", price_id, "price")
        if any(item["price"]["id"] == price_id for item in sub["items"]["data"]):
            raise invalid("The subscription already has an item with this price.", "price")
        start, end = self._period(sub)
        item = {
            "id": new_id("si_", 14), "object": "subscription_item", "created": self.now(),
            "current_period_end": end, "current_period_start": start, "discounts": [], "metadata": {},
            "price": copy.deepcopy(self.prices[price_id]), "quantity": None, "subscription": sub["id"],
            "tax_rates": [],
        }
        sub["items"]["data"].append(item)
        sub["items"]["total_count"] = len(sub["items"]["data"])
        self.emit("customer.subscription.updated", sub)
        return item

    def subscription_list(self, params: dict) -> list[dict]:
        subs = list(reversed(self.subscriptions.values()))
        if params.get("customer"):
            subs = [s for s in subs if s["customer"] == params["customer"]]
        status = params.get("status")
        if status and status != "all":
            subs = [s for s in subs if s["status"] == status]
        elif not status:
            subs = [s for s in subs if s["status"] != "canceled"]
        return subs

    def subscription_update(self, subscription_id: str, params: dict) -> dict:
        sub = self.subscription(subscription_id)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise invalid("A canceled subscription can only update its cancellation_details and metadata.")
        previous: dict[str, Any] = {}
        if "cancel_at_period_end" in params:
            wanted = as_bool(params["cancel_at_period_end"])
            if wanted != sub["cancel_at_period_end"]:
                previous.update(cancel_at_period_end=sub["cancel_at_period_end"], cancel_at=sub["cancel_at"])
                sub["cancel_at_period_end"] = wanted
                sub["cancel_at"] = self._period(sub)[1] if wanted else None
                sub["canceled_at"] = self.now() if wanted else None
        if "metadata" in params:
            previous["metadata"] = sub["metadata"]
            sub["metadata"] = _metadata(sub["metadata"], params["metadata"])
        if previous:
            self.emit("customer.subscription.updated", sub, previous)
        return sub

    def _period(self, sub: dict) -> tuple[int, int]:
        item = sub["items"]["data"][0]
        return item["current_period_start"], item["current_period_end"]

    def _set_period(self, sub: dict, start: int, end: int) -> None:
        for item in sub["items"]["data"]:
            item["current_period_start"], item["current_period_end"] = start, end

    def _set_status(self, sub: dict, status: str, previous: dict) -> None:
        if sub["status"] != status:
            previous.setdefault("status", sub["status"])
            sub["status"] = status

    def subscription_cancel(self, subscription_id: str) -> dict:
        sub = self.subscription(subscription_id)
        if sub["status"] == "canceled":
            raise invalid("This subscription is already canceled.", code="resource_missing")
        now = self.now()
        sub.update(status="canceled", canceled_at=sub["canceled_at"] or now, ended_at=now, cancel_at_period_end=False)
        self.emit("customer.subscription.deleted", sub)
        return sub

    def subscription_advance(self, subscription_id: str) -> dict | None:
        """The current period ends now (a test clock jumping to the period's end): the closing invoice is made and
        collected, and a new period starts (or the subscription ends, when it was to cancel at the period's end).
        Returns the invoice, if one was made."""
        sub = self.subscription(subscription_id)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise invalid("A canceled subscription has no next period.")
        if sub["status"] == "trialing":
            return self.trial_end(subscription_id)
        # The period closes at the end of the current second, so usage reported just before counts in it.
        now = self.now() + 1
        start, _end = self._period(sub)
        if sub["cancel_at_period_end"]:
            invoice = self._invoice_create(sub, "subscription_cycle", fee_period=None, usage_period=(start, now))
            sub["latest_invoice"] = invoice["id"]
            self._invoice_collect(invoice, sub)
            self.subscription_cancel(subscription_id)
            return invoice
        previous: dict[str, Any] = {"items": copy.deepcopy(sub["items"]), "latest_invoice": sub["latest_invoice"]}
        new_end = add_month(now)
        self._set_period(sub, now, new_end)
        invoice = self._invoice_create(sub, "subscription_cycle", fee_period=(now, new_end), usage_period=(start, now))
        sub["latest_invoice"] = invoice["id"]
        self.emit("customer.subscription.updated", sub, previous)
        self._invoice_collect(invoice, sub)
        return invoice

    def trial_end(self, subscription_id: str) -> dict | None:
        """The trial ends now. Without a payment method it ends as the subscription says (cancel, pause or an open
        invoice); with one, the first paid period starts and its invoice is collected."""
        sub = self.subscription(subscription_id)
        if sub["status"] != "trialing":
            raise invalid("This subscription is not trialing.")
        now = self.now()
        previous: dict[str, Any] = {"trial_end": sub["trial_end"], "items": copy.deepcopy(sub["items"])}
        sub["trial_end"] = now
        has_card = sub["customer"] in self._has_card
        behaviour = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
        if not has_card and behaviour == "cancel":
            sub["cancellation_details"]["reason"] = "cancellation_requested"
            self.subscription_cancel(subscription_id)
            return None
        if not has_card and behaviour == "pause":
            self._set_status(sub, "paused", previous)
            self.emit("customer.subscription.updated", sub, previous)
            self.emit("customer.subscription.paused", sub)
            return None
        new_end = add_month(now)
        self._set_period(sub, now, new_end)
        self._set_status(sub, "active", previous)
        # Usage during the trial is free: the first invoice bills the new period's fee only.
        invoice = self._invoice_create(sub, "subscription_cycle", fee_period=(now, new_end), usage_period=None)
        previous["latest_invoice"] = sub["latest_invoice"]
        sub["latest_invoice"] = invoice["id"]
        self.emit("customer.subscription.updated", sub, previous)
        self._invoice_collect(invoice, sub)
        return invoice

    # --- invoices -----------------------------------------------------------------------------------------------
    def invoice(self, invoice_id: str, param: str = "id") -> dict:
        if invoice_id not in self.invoices:
            raise missing("invoice", invoice_id, param)
        return self.invoices[invoice_id]

    def invoice_view(self, invoice: dict) -> dict:
        view = copy.deepcopy(invoice)
        lines = self._invoice_lines[invoice["id"]]
        view["lines"] = {
            "object": "list",
            "data": copy.deepcopy(lines[:10]),
            "has_more": len(lines) > 10,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice['id']}/lines",
        }
        return view

    def invoice_lines(self, invoice_id: str) -> list[dict]:
        self.invoice(invoice_id)
        return self._invoice_lines[invoice_id]

    def invoice_list(self, params: dict) -> list[dict]:
        invoices = list(reversed(self.invoices.values()))
        for field in ("customer", "status"):
            if params.get(field):
                invoices = [i for i in invoices if i[field] == params[field]]
        if params.get("subscription"):
            invoices = [
                i for i in invoices if i["parent"]["subscription_details"]["subscription"] == params["subscription"]
            ]
        return invoices

    def _line_amount(self, price: dict, quantity: int) -> Decimal:
        tiers = self._tiers.get(price["id"])
        if not tiers:
            return Decimal(price["unit_amount_decimal"] or 0) * quantity
        if price["tiers_mode"] == "volume":
            tier = next(t for t in tiers if t["up_to"] is None or quantity <= t["up_to"])
            return Decimal(tier["unit_amount_decimal"]) * quantity + tier["flat_amount"]
        total = Decimal(0)
        floor = 0
        for tier in tiers:
            ceiling = tier["up_to"] if tier["up_to"] is not None else max(quantity, floor)
            in_tier = max(0, min(quantity, ceiling) - floor)
            if in_tier:
                total += Decimal(tier["unit_amount_decimal"]) * in_tier + tier["flat_amount"]
            floor = ceiling
        return total

    def _invoice_create(
        self,
        sub: dict,
        reason: str,
        *,
        fee_period: tuple[int, int] | None,
        usage_period: tuple[int, int] | None,
        free: bool = False,
    ) -> dict:
        now = self.now()
        customer = self.customers[sub["customer"]]
        invoice_id = new_id("in_")
        taxed = sub["automatic_tax"]["enabled"] and (customer.get("address") or {}).get("country") == "AU"
        lines = []
        for item in sub["items"]["data"]:
            price = self.prices[item["price"]["id"]]
            product = self.products[price["product"]]
            metered = price["recurring"]["usage_type"] == "metered"
            if metered:
                if usage_period is None:
                    continue
                period = usage_period
                quantity = max(0, self.usage(price["recurring"]["meter"], customer["id"], *period))
            else:
                if fee_period is None:
                    continue
                period = fee_period
                quantity = item["quantity"] or 1
            amount = 0 if free else cents(self._line_amount(price, quantity))
            tax = cents(Decimal(amount) * GST_RATE) if taxed else 0
            label = product["name"] + (f" ({price['nickname']})" if price["nickname"] else "")
            lines.append(
                {
                    "id": new_id("il_"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": price["currency"],
                    "description": ("Trial period for " if free else f"{quantity} x ") + label,
                    "discount_amounts": [],
                    "discountable": True,
                    "discounts": [],
                    "invoice": invoice_id,
                    "livemode": False,
                    "metadata": {},
                    "parent": {
                        "invoice_item_details": None,
                        "subscription_item_details": {
                            "invoice_item": None,
                            "proration": False,
                            "proration_details": {"credited_items": None},
                            "subscription": sub["id"],
                            "subscription_item": item["id"],
                        },
                        "type": "subscription_item_details",
                    },
                    "period": {"end": period[1], "start": period[0]},
                    "pretax_credit_amounts": [],
                    "pricing": {
                        "price_details": {"price": price["id"], "product": product["id"]},
                        "type": "price_details",
                        "unit_amount_decimal": price["unit_amount_decimal"],
                    },
                    "quantity": quantity,
                    "taxes": [
                        {
                            "amount": tax,
                            "tax_behavior": "exclusive",
                            "tax_rate_details": None,
                            "taxability_reason": "standard_rated",
                            "taxable_amount": amount,
                            "type": "tax_rate_details",
                        }
                    ]
                    if taxed
                    else [],
                }
            )
        subtotal = sum(line["amount"] for line in lines)
        tax = sum(t["amount"] for line in lines for t in line["taxes"])
        self._invoice_seq[customer["id"]] = self._invoice_seq.get(customer["id"], 0) + 1
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "AU",
            "account_name": "Wattle (Stripe stand-in)",
            "account_tax_ids": None,
            "amount_due": subtotal + tax,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": subtotal + tax,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": True,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": sub["automatic_tax"]["enabled"],
                "liability": None,
                "status": "complete",
            },
            "billing_reason": reason,
            "collection_method": "charge_automatically",
            "created": now,
            "currency": sub["currency"],
            "customer": customer["id"],
            "customer_address": customer["address"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "customer_tax_ids": [
                {"type": t["type"], "value": t["value"]}
                for t in self.tax_ids.values()
                if t["customer"] == customer["id"]
            ],
            "default_payment_method": None,
            "description": None,
            "hosted_invoice_url": f"{self.base_url}/invoices/{invoice_id}",
            "invoice_pdf": f"{self.base_url}/invoices/{invoice_id}/pdf",
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": f"{customer['invoice_prefix']}-{self._invoice_seq[customer['id']]:04d}",
            "parent": {
                "quote_details": None,
                "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
                "type": "subscription_details",
            },
            # As Stripe: "the usage period", one period back for a subscription's invoice (the period it closes);
            # an invoice billing no usage (the first one) has an empty period at its creation.
            "period_end": usage_period[1] if usage_period else now,
            "period_start": usage_period[0] if usage_period else now,
            "status": "open",
            "status_transitions": {
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "total": subtotal + tax,
            "total_discount_amounts": [],
            "total_excluding_tax": subtotal,
            "total_taxes": [
                {
                    "amount": tax,
                    "tax_behavior": "exclusive",
                    "tax_rate_details": None,
                    "taxability_reason": "standard_rated",
                    "taxable_amount": subtotal,
                    "type": "tax_rate_details",
                }
            ]
            if taxed
            else [],
        }
        self.invoices[invoice_id] = invoice
        self._invoice_lines[invoice_id] = lines
        self.emit("invoice.created", self.invoice_view(invoice))
        self.emit("invoice.finalized", self.invoice_view(invoice))
        return invoice

    def _invoice_collect(self, invoice: dict, sub: dict) -> None:
        """Charge the customer's card: paid, or failed (the subscription falls past due)."""
        if invoice["amount_due"] == 0:
            self._invoice_paid(invoice, sub)
            return
        customer_id = invoice["customer"]
        invoice["attempted"] = True
        invoice["attempt_count"] += 1
        if customer_id in self._has_card and customer_id not in self.card_declines:
            self._invoice_paid(invoice, sub)
            return
        invoice["next_payment_attempt"] = self.now() + 3 * 86400
        self.emit("invoice.payment_failed", self.invoice_view(invoice))
        previous: dict[str, Any] = {}
        if sub["status"] in ("active", "trialing"):
            self._set_status(sub, "past_due", previous)
            self.emit("customer.subscription.updated", sub, previous)

    def _invoice_paid(self, invoice: dict, sub: dict | None) -> None:
        now = self.now()
        invoice.update(
            status="paid",
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
            status_transitions={**invoice["status_transitions"], "paid_at": now},
        )
        self.emit("invoice.paid", self.invoice_view(invoice))
        if sub is not None and sub["status"] in ("past_due", "unpaid", "incomplete"):
            previous: dict[str, Any] = {}
            self._set_status(sub, "active", previous)
            self.emit("customer.subscription.updated", sub, previous)

    def invoice_pay(self, invoice_id: str) -> dict:
        """The customer pays an open invoice with a working card (the hosted invoice page, or the portal)."""
        invoice = self.invoice(invoice_id)
        if invoice["status"] != "open":
            raise invalid(f"Invoice is already {invoice['status']}.", code="invoice_not_open")
        customer_id = invoice["customer"]
        self.card_declines.discard(customer_id)
        self._has_card.add(customer_id)
        invoice["attempted"] = True
        invoice["attempt_count"] += 1
        sub_id = invoice["parent"]["subscription_details"]["subscription"]
        self._invoice_paid(invoice, self.subscriptions.get(sub_id))
        return invoice

    def card_replace(self, customer_id: str) -> None:
        """A working card from now on (the portal's "update payment method"): open invoices are retried."""
        self.customer(customer_id)
        self.card_declines.discard(customer_id)
        self._has_card.add(customer_id)
        for invoice in list(self.invoices.values()):
            if invoice["customer"] == customer_id and invoice["status"] == "open":
                self.invoice_pay(invoice["id"])

    def card_ok(self, customer_id: str) -> bool:
        return customer_id in self._has_card and customer_id not in self.card_declines

    def set_card_declines(self, customer_id: str, declines: bool = True) -> None:
        self.customer(customer_id)
        if declines:
            self.card_declines.add(customer_id)
        else:
            self.card_declines.discard(customer_id)
