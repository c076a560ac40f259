"""What the stand-in's parts share: Stripe's error shape, ids, and parsing of numbers, dates and metadata."""

from __future__ import annotations

import calendar
import re
import secrets
import string
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

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
