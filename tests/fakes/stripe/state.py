"""The stand-in's objects and what happens to them: Stripe's API operations and the lifecycle of a subscription.

Objects are plain dicts in the shape of Stripe's API version 2025-03-31 and later (periods on subscription items,
invoice lines priced through ``pricing.price_details``, taxes in ``total_taxes``). Every state change appends an
event whose ``data.object`` is a copy of the object at that moment. One lock guards everything: the server holds
it for a whole request, so requests apply one at a time, as if Stripe were a single serial database.
"""

from __future__ import annotations

import calendar
import copy
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tests.fakes.stripe.forms import as_bool

API_VERSION = "2026-10-28.endive"
GST_RATE = Decimal("0.10")
METER_EVENT_MAX_AGE_S = 35 * 86400
METER_EVENT_MAX_FUTURE_S = 300
_ALPHABET = string.ascii_letters + string.digits
_WHOLE = re.compile(r"^-?\d+$")
_ABN = re.compile(r"^\d{11}$")
_TAX_ID_FORMATS = {"au_abn": _ABN, "au_arn": re.compile(r"^\d{12}$")}


class ApiError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param:
            error["param"] = self.param
        if self.code:
            error["code"] = self.code
        return {"error": error}


def missing(kind: str, object_id: str, param: str = "id") -> ApiError:
    """Stripe's answer for an unknown object: 404 when it is the one in the URL, 400 when a parameter names it."""
    status = 404 if param == "id" else 400
    return ApiError(status, f"No such {kind}: '{object_id}'", param=param, code="resource_missing")


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def add_month(ts: int) -> int:
    """The same day and time next month (the last day when next month is shorter), as Stripe's monthly cycle."""
    dt = datetime.fromtimestamp(ts, UTC)
    year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


def _int(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {value}", param, "parameter_invalid_integer") from None


def _decimal(value: Any, param: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {value}", param, "parameter_invalid_decimal") from None
    if not number.is_finite() or number < 0 or -number.as_tuple().exponent > 12:
        raise invalid(f"Invalid decimal: {value} (at most 12 decimal places)", param, "parameter_invalid_decimal")
    return number


def _metadata(existing: dict[str, str], given: Any) -> dict[str, str]:
    """Stripe merges metadata; an empty string deletes a key, and ``metadata=`` clears it all."""
    if given is None:
        return existing
    if given == "":
        return {}
    if not isinstance(given, dict):
        raise invalid("Invalid metadata", "metadata")
    merged = dict(existing)
    for key, value in given.items():
        if len(key) > 40 or len(str(value)) > 500:
            raise invalid("Metadata keys are at most 40 characters and values at most 500", f"metadata[{key}]")
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged


def cents(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


class StripeState:
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

    # --- Checkout and the portal --------------------------------------------------------------------------------
    def checkout_session(self, session_id: str) -> dict:
        if session_id not in self.checkout_sessions:
            raise missing("checkout.session", session_id)
        return self.checkout_sessions[session_id]

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
        periods = [line["period"] for line in lines]
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
            "period_end": max((p["end"] for p in periods), default=now),
            "period_start": min((p["start"] for p in periods), default=now),
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
