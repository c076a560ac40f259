"""Customers and their tax ids, products, prices, Billing Meters and meter events."""

from __future__ import annotations

import copy
import re
import secrets
import string
from decimal import Decimal
from typing import Any

from tests.fakes.stripe.common import (
    _TAX_ID_FORMATS,
    _WHOLE,
    METER_EVENT_MAX_AGE_S,
    METER_EVENT_MAX_FUTURE_S,
    ApiError,
    _decimal,
    _int,
    _metadata,
    invalid,
    missing,
    new_id,
)
from tests.fakes.stripe.forms import as_bool


class Catalogue:
    """The catalogue's operations; the attributes they use are StripeState's."""

    # --- customers ----------------------------------------------------------------------------------------------
    def customer(self, customer_id: str, param: str = "id") -> dict:
        found = self.customers.get(customer_id)
        if found is None or found.get("deleted"):
            raise missing("customer", customer_id, param)
        return found

    def customer_create(self, params: dict) -> dict:
        email = params.get("email")
        if email and "@" not in email:
            raise invalid("Invalid email address: " + email, "email", "email_invalid")
        tax_data = params.get("tax_id_data") or []
        for i, item in enumerate(tax_data):
            self._check_tax_id(item.get("type"), item.get("value"), f"tax_id_data[{i}][value]")
        customer_id = new_id("cus_", 14)
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self.now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": params.get("description"),
            "email": email,
            "invoice_prefix": "".join(secrets.choice(string.ascii_uppercase) for _ in range(8)),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
            "livemode": False,
            "metadata": _metadata({}, params.get("metadata")),
            "name": params.get("name"),
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.customers[customer_id] = customer
        self.emit("customer.created", customer)
        for item in tax_data:
            self._tax_id_add(customer_id, item["type"], item["value"])
        return customer

    def customer_update(self, customer_id: str, params: dict) -> dict:
        customer = self.customer(customer_id)
        previous: dict[str, Any] = {}
        for field in ("name", "email", "description", "phone"):
            if field in params and params[field] != customer.get(field):
                if field == "email" and params[field] and "@" not in params[field]:
                    raise invalid("Invalid email address: " + params[field], "email", "email_invalid")
                previous[field] = customer.get(field)
                customer[field] = params[field] or None
        if "metadata" in params:
            previous["metadata"] = customer["metadata"]
            customer["metadata"] = _metadata(customer["metadata"], params["metadata"])
        if "address" in params:
            previous["address"] = customer["address"]
            customer["address"] = params["address"] or None
        if previous:
            self.emit("customer.updated", customer, previous)
        return customer

    def _check_tax_id(self, type_: Any, value: Any, param: str) -> str:
        pattern = _TAX_ID_FORMATS.get(str(type_))
        if pattern is None:
            raise invalid(f"Invalid tax id type: {type_}", param.replace("value", "type"), "tax_id_invalid")
        compact = re.sub(r"\s+", "", str(value or ""))
        if not pattern.match(compact):
            raise invalid(f"Invalid value for {type_}.", param, "tax_id_invalid")
        return compact

    def _tax_id_add(self, customer_id: str, type_: str, value: str) -> dict:
        tax_id = {
            "id": new_id("txi_"),
            "object": "tax_id",
            "country": "AU",
            "created": self.now(),
            "customer": customer_id,
            "livemode": False,
            "owner": {"type": "customer", "customer": customer_id},
            "type": type_,
            "value": re.sub(r"\s+", "", value),
            # Stripe verifies ABNs against the Australian Business Register; the stand-in trusts the format.
            "verification": {"status": "verified", "verified_address": None, "verified_name": None},
        }
        self.tax_ids[tax_id["id"]] = tax_id
        self.emit("customer.tax_id.created", tax_id)
        return tax_id

    def tax_id_create(self, customer_id: str, params: dict) -> dict:
        self.customer(customer_id)
        value = self._check_tax_id(params.get("type"), params.get("value"), "value")
        return self._tax_id_add(customer_id, params["type"], value)

    def tax_id_list(self, customer_id: str) -> list[dict]:
        self.customer(customer_id)
        return [t for t in reversed(self.tax_ids.values()) if t["customer"] == customer_id]

    def tax_id_set(self, customer_id: str, type_: str, value: str) -> dict:
        """A customer's tax id of ``type_`` becomes ``value`` (as when they edit it in the portal)."""
        self.customer(customer_id)
        value = self._check_tax_id(type_, value, "value")
        for tax_id in self.tax_ids.values():
            if tax_id["customer"] == customer_id and tax_id["type"] == type_:
                previous = {"value": tax_id["value"]}
                tax_id["value"] = value
                self.emit("customer.tax_id.updated", tax_id, previous)
                return tax_id
        return self._tax_id_add(customer_id, type_, value)

    # --- products, prices, meters -------------------------------------------------------------------------------
    def product(self, product_id: str, param: str = "id") -> dict:
        if product_id not in self.products:
            raise missing("product", product_id, param)
        return self.products[product_id]

    def product_create(self, params: dict) -> dict:
        if not params.get("name"):
            raise invalid("Missing required param: name.", "name", "parameter_missing")
        now = self.now()
        product = {
            "id": params.get("id") or new_id("prod_", 14),
            "object": "product",
            "active": as_bool(params.get("active"), True),
            "created": now,
            "default_price": None,
            "description": params.get("description"),
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": _metadata({}, params.get("metadata")),
            "name": params["name"],
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": params.get("tax_code"),
            "type": "service",
            "unit_label": None,
            "updated": now,
            "url": None,
        }
        if product["id"] in self.products:
            raise invalid(f"Product already exists: {product['id']}", "id", "resource_already_exists")
        self.products[product["id"]] = product
        self.emit("product.created", product)
        return product

    def product_update(self, product_id: str, params: dict) -> dict:
        product = self.product(product_id)
        previous: dict[str, Any] = {}
        if "name" in params:
            if not params["name"]:
                raise invalid("A product needs a name.", "name")
            previous["name"], product["name"] = product["name"], params["name"]
        if "active" in params:
            previous["active"], product["active"] = product["active"], as_bool(params["active"])
        if "metadata" in params:
            previous["metadata"] = product["metadata"]
            product["metadata"] = _metadata(product["metadata"], params["metadata"])
        product["updated"] = self.now()
        self.emit("product.updated", product, previous)
        return product

    def price(self, price_id: str, param: str = "id") -> dict:
        if price_id not in self.prices:
            raise missing("price", price_id, param)
        return self.prices[price_id]

    def price_view(self, price: dict, expand: list[str] | tuple = ()) -> dict:
        view = copy.deepcopy(price)
        if "tiers" in expand or "data.tiers" in expand:
            view["tiers"] = copy.deepcopy(self._tiers.get(price["id"]))
        return view

    def _lookup_key_holder(self, lookup_key: str) -> dict | None:
        return next((p for p in self.prices.values() if p["lookup_key"] == lookup_key), None)

    def price_create(self, params: dict) -> dict:
        product_id = params.get("product")
        if not product_id:
            raise invalid("Missing required param: product.", "product", "parameter_missing")
        self.product(product_id, "product")
        currency = (params.get("currency") or "").lower()
        if not re.match(r"^[a-z]{3}$", currency):
            raise invalid("Missing required param: currency.", "currency", "parameter_missing")
        recurring = params.get("recurring")
        meter = None
        usage_type = None
        if recurring:
            if recurring.get("interval") not in ("day", "week", "month", "year"):
                raise invalid("Invalid recurring[interval]", "recurring[interval]")
            usage_type = recurring.get("usage_type") or "licensed"
            meter = recurring.get("meter")
            if usage_type == "metered":
                if not meter:
                    raise invalid("Metered prices need a meter.", "recurring[meter]", "parameter_missing")
                if meter not in self.meters:
                    raise missing("billing.meter", meter, "recurring[meter]")
            elif meter:
                raise invalid("A meter can only be set on a metered price.", "recurring[meter]")
        tax_behavior = params.get("tax_behavior") or "unspecified"
        if tax_behavior not in ("exclusive", "inclusive", "unspecified"):
            raise invalid(f"Invalid tax_behavior: {tax_behavior}", "tax_behavior")
        scheme = params.get("billing_scheme") or "per_unit"
        unit_amount = None
        unit_amount_decimal = None
        tiers = None
        if scheme == "per_unit":
            if params.get("unit_amount") not in (None, ""):
                unit_amount = _int(params["unit_amount"], "unit_amount")
                if unit_amount < 0:
                    raise invalid("unit_amount cannot be negative", "unit_amount")
                unit_amount_decimal = str(unit_amount)
            elif params.get("unit_amount_decimal") not in (None, ""):
                decimal = _decimal(params["unit_amount_decimal"], "unit_amount_decimal")
                unit_amount_decimal = format(decimal, "f")
                if decimal == decimal.to_integral_value():
                    unit_amount = int(decimal)
            else:
                raise invalid("Missing required param: unit_amount.", "unit_amount", "parameter_missing")
        elif scheme == "tiered":
            tiers = self._parse_tiers(params)
        else:
            raise invalid(f"Invalid billing_scheme: {scheme}", "billing_scheme")
        lookup_key = params.get("lookup_key") or None
        if lookup_key:
            holder = self._lookup_key_holder(lookup_key)
            if holder is not None:
                if not as_bool(params.get("transfer_lookup_key")):
                    raise invalid(
                        f"A price ({holder['id']}) already uses that lookup key.", "lookup_key", "lookup_key_in_use"
                    )
                holder["lookup_key"] = None
                self.emit("price.updated", holder, {"lookup_key": lookup_key})
        price_id = new_id("price_")
        price = {
            "id": price_id,
            "object": "price",
            "active": as_bool(params.get("active"), True),
            "billing_scheme": scheme,
            "created": self.now(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": _metadata({}, params.get("metadata")),
            "nickname": params.get("nickname") or None,
            "product": product_id,
            "recurring": (
                {
                    "interval": recurring["interval"],
                    "interval_count": _int(recurring.get("interval_count") or 1, "recurring[interval_count]"),
                    "meter": meter,
                    "trial_period_days": None,
                    "usage_type": usage_type,
                }
                if recurring
                else None
            ),
            "tax_behavior": tax_behavior,
            "tiers_mode": params.get("tiers_mode") if scheme == "tiered" else None,
            "transform_quantity": None,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        self.prices[price_id] = price
        if tiers is not None:
            self._tiers[price_id] = tiers
        self.emit("price.created", price)
        return price

    def _parse_tiers(self, params: dict) -> list[dict]:
        if params.get("tiers_mode") not in ("graduated", "volume"):
            raise invalid("Tiered prices need tiers_mode graduated or volume.", "tiers_mode", "parameter_missing")
        raw = params.get("tiers")
        if not isinstance(raw, list) or not raw:
            raise invalid("Tiered prices need tiers.", "tiers", "parameter_missing")
        tiers = []
        last_up_to = 0
        for i, tier in enumerate(raw):
            up_to = tier.get("up_to")
            if up_to == "inf":
                if i != len(raw) - 1:
                    raise invalid("Only the last tier may be up_to=inf.", f"tiers[{i}][up_to]")
                up_to_value = None
            else:
                up_to_value = _int(up_to, f"tiers[{i}][up_to]")
                if up_to_value <= last_up_to:
                    raise invalid("Tiers must increase.", f"tiers[{i}][up_to]")
                last_up_to = up_to_value
            if tier.get("unit_amount") not in (None, ""):
                unit = Decimal(_int(tier["unit_amount"], f"tiers[{i}][unit_amount]"))
            elif tier.get("unit_amount_decimal") not in (None, ""):
                unit = _decimal(tier["unit_amount_decimal"], f"tiers[{i}][unit_amount_decimal]")
            else:
                unit = Decimal(0)
            flat = _int(tier.get("flat_amount") or 0, f"tiers[{i}][flat_amount]")
            tiers.append(
                {
                    "flat_amount": flat,
                    "flat_amount_decimal": str(flat),
                    "unit_amount": int(unit) if unit == unit.to_integral_value() else None,
                    "unit_amount_decimal": format(unit, "f"),
                    "up_to": up_to_value,
                }
            )
        if tiers[-1]["up_to"] is not None:
            raise invalid("The last tier must be up_to=inf.", f"tiers[{len(tiers) - 1}][up_to]")
        return tiers

    def price_update(self, price_id: str, params: dict) -> dict:
        price = self.price(price_id)
        previous: dict[str, Any] = {}
        if "active" in params:
            previous["active"], price["active"] = price["active"], as_bool(params["active"])
        if "nickname" in params:
            previous["nickname"], price["nickname"] = price["nickname"], params["nickname"] or None
        if "metadata" in params:
            previous["metadata"] = price["metadata"]
            price["metadata"] = _metadata(price["metadata"], params["metadata"])
        if "lookup_key" in params:
            key = params["lookup_key"] or None
            holder = self._lookup_key_holder(key) if key else None
            if holder is not None and holder is not price:
                if not as_bool(params.get("transfer_lookup_key")):
                    raise invalid(
                        f"A price ({holder['id']}) already uses that lookup key.", "lookup_key", "lookup_key_in_use"
                    )
                holder["lookup_key"] = None
            previous["lookup_key"], price["lookup_key"] = price["lookup_key"], key
        self.emit("price.updated", price, previous)
        return price

    def price_list(self, params: dict) -> list[dict]:
        prices = list(reversed(self.prices.values()))
        keys = params.get("lookup_keys")
        if keys is not None:
            keys = keys if isinstance(keys, list) else [keys]
            prices = [p for p in prices if p["lookup_key"] in keys]
        if "active" in params:
            prices = [p for p in prices if p["active"] == as_bool(params["active"])]
        if params.get("product"):
            prices = [p for p in prices if p["product"] == params["product"]]
        if params.get("currency"):
            prices = [p for p in prices if p["currency"] == params["currency"]]
        return prices

    def meter(self, meter_id: str, param: str = "id") -> dict:
        if meter_id not in self.meters:
            raise missing("billing.meter", meter_id, param)
        return self.meters[meter_id]

    def meter_create(self, params: dict) -> dict:
        for field in ("display_name", "event_name"):
            if not params.get(field):
                raise invalid(f"Missing required param: {field}.", field, "parameter_missing")
        formula = (params.get("default_aggregation") or {}).get("formula")
        if formula not in ("sum", "count", "last"):
            raise invalid("Missing required param: default_aggregation[formula].", "default_aggregation[formula]")
        event_name = params["event_name"]
        if any(m["event_name"] == event_name for m in self.meters.values()):
            raise invalid(f"A meter with event_name {event_name} already exists.", "event_name")
        mapping = params.get("customer_mapping") or {}
        value_settings = params.get("value_settings") or {}
        now = self.now()
        meter = {
            "id": new_id("mtr_test_"),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": mapping.get("event_payload_key") or "stripe_customer_id",
                "type": mapping.get("type") or "by_id",
            },
            "default_aggregation": {"formula": formula},
            "display_name": params["display_name"],
            "event_name": event_name,
            "event_time_window": params.get("event_time_window"),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_settings.get("event_payload_key") or "value"},
        }
        self.meters[meter["id"]] = meter
        return meter

    def meter_list(self, params: dict) -> list[dict]:
        meters = list(reversed(self.meters.values()))
        if params.get("status"):
            meters = [m for m in meters if m["status"] == params["status"]]
        return meters

    # --- meter events -------------------------------------------------------------------------------------------
    def meter_event_create(self, params: dict) -> dict:
        event_name = params.get("event_name")
        if not event_name:
            raise invalid("Missing required param: event_name.", "event_name", "parameter_missing")
        payload = params.get("payload")
        if not isinstance(payload, dict):
            raise invalid("Missing required param: payload.", "payload", "parameter_missing")
        now = self.now()
        timestamp = _int(params["timestamp"], "timestamp") if params.get("timestamp") not in (None, "") else now
        if timestamp < now - METER_EVENT_MAX_AGE_S or timestamp > now + METER_EVENT_MAX_FUTURE_S:
            raise invalid(
                "Timestamp must be within the past 35 calendar days and no more than 5 minutes in the future.",
                "timestamp",
            )
        meter = next(
            (m for m in self.meters.values() if m["event_name"] == event_name and m["status"] == "active"), None
        )
        value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
        customer_key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
        value = payload.get(value_key)
        if value is None or not _WHOLE.match(str(value)):
            raise invalid(f"The payload's {value_key} must be a whole number.", f"payload[{value_key}]")
        identifier = params.get("identifier") or new_id("mev_")
        if identifier in self._identifiers:
            # What Stripe answers (and that it tells the SDK not to retry it): the event is already held.
            raise ApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                headers={"Stripe-Should-Retry": "false"},
            )
        self._identifiers.add(identifier)
        record = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": {k: str(v) for k, v in payload.items()},
            "timestamp": timestamp,
        }
        customer_id = payload.get(customer_key)
        # Stripe validates the meter and the customer asynchronously: the request succeeds, the event is dropped and
        # an error report follows. The stand-in keeps the dropped ones in ``meter_event_errors``.
        if meter is None:
            self.meter_event_errors.append({"code": "meter_event_no_meter_found", "event": record})
        elif customer_id not in self.customers:
            self.meter_event_errors.append({"code": "meter_event_no_customer_defined", "event": record})
        else:
            self.meter_events.append({**record, "_meter": meter["id"], "_customer": customer_id, "_value": int(value)})
        return record

    def usage(self, meter_id: str, customer_id: str, start: int, end: int) -> int:
        """The sum of a customer's meter events with ``start <= timestamp < end``."""
        return sum(
            e["_value"]
            for e in self.meter_events
            if e["_meter"] == meter_id and e["_customer"] == customer_id and start <= e["timestamp"] < end
        )

    def meter_event_summaries(self, meter_id: str, params: dict) -> list[dict]:
        meter = self.meter(meter_id)
        customer_id = params.get("customer")
        if not customer_id:
            raise invalid("Missing required param: customer.", "customer", "parameter_missing")
        for field in ("start_time", "end_time"):
            if params.get(field) in (None, ""):
                raise invalid(f"Missing required param: {field}.", field, "parameter_missing")
        start = _int(params["start_time"], "start_time")
        end = _int(params["end_time"], "end_time")
        if end <= start:
            raise invalid("end_time must be after start_time.", "end_time")
        window = params.get("value_grouping_window")
        size = {"hour": 3600, "day": 86400, None: None, "": None}.get(window, 0)
        if size == 0:
            raise invalid(f"Invalid value_grouping_window: {window}", "value_grouping_window")
        if size and (start % size or end % size):
            raise invalid(
                f"start_time and end_time must be aligned with {window} boundaries (UTC).",
                "start_time" if start % size else "end_time",
            )
        if start % 60 or end % 60:
            raise invalid("start_time and end_time must be aligned with minute boundaries.", "start_time")
        buckets: dict[int, int] = {}
        for event in self.meter_events:
            if event["_meter"] != meter_id or event["_customer"] != customer_id:
                continue
            if not start <= event["timestamp"] < end:
                continue
            key = start + (event["timestamp"] - start) // size * size if size else start
            buckets[key] = buckets.get(key, 0) + event["_value"]
        if not size and not buckets:
            buckets[start] = 0
        return [
            {
                "id": f"mtrusg_{meter_id[-10:]}{customer_id[-6:]}{key}",
                "object": "billing.meter_event_summary",
                "aggregated_value": float(total),
                "end_time": key + size if size else end,
                "livemode": False,
                "meter": meter["id"],
                "start_time": key,
            }
            for key, total in sorted(buckets.items())
        ]

    def meter_totals(self) -> dict[tuple[str, str, int], int]:
        """(customer id, event name, hour start) -> the units Stripe holds, for tests of exactly-once reporting."""
        totals: dict[tuple[str, str, int], int] = {}
        for event in self.meter_events:
            key = (event["_customer"], event["event_name"], event["timestamp"] // 3600 * 3600)
            totals[key] = totals.get(key, 0) + event["_value"]
        return totals
