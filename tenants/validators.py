"""Validation of Australian business identifiers and other tenant fields."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

_ABN_WEIGHTS = (10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)


def normalise_abn(value: str) -> str:
    """Digits only: people write ABNs as ``51 824 753 556``."""
    return re.sub(r"[\s-]", "", value or "")


def abn_is_valid(value: str) -> bool:
    """The ATO's check: subtract 1 from the first digit, weight the digits, the sum is divisible by 89."""
    digits = normalise_abn(value)
    if len(digits) != 11 or not digits.isdigit() or digits[0] == "0":
        return False
    numbers = [int(d) for d in digits]
    numbers[0] -= 1
    return sum(w * n for w, n in zip(_ABN_WEIGHTS, numbers, strict=True)) % 89 == 0


def validate_abn(value: str) -> str:
    """Return the ABN as 11 digits, or raise a ValidationError that says what is wrong."""
    digits = normalise_abn(value)
    if not digits:
        return ""
    if not digits.isdigit() or len(digits) != 11:
        raise ValidationError("An ABN has 11 digits, e.g. 51 824 753 556.", code="abn_format")
    if not abn_is_valid(digits):
        raise ValidationError("This is not a valid ABN: its check digits do not match.", code="abn_checksum")
    return digits
