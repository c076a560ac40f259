"""Fixtures shared by billing's tests (the data itself is in ``tests.billing.billing_data``)."""

from tests.billing.billing_data import billed, business, prices  # noqa: F401 (fixtures, registered by import)
