"""Signals tenants sends for the apps that build on it (billing), which tenants never imports."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after the commit of a change to a tenant's own row that the data plane must see (its status), with
# ``tenant``. Billing publishes the tenant's record (``billing.snapshot``).
tenant_changed = Signal()
