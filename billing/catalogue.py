"""The tenant console's model catalogue: the models the organisation may use, each with its context length, its
price per million input and output tokens on the organisation's plan (``billing.pricing``: the plan's own price,
else the platform's), and where it runs.

Here, in billing, because the prices are billing's; the models come from the control plane's view of the backend
pool (``inference.selectors.served_models``, the same list the key form offers)."""

from __future__ import annotations

from dataclasses import dataclass

from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing import pricing
from core.privacy import REGION_NAMES
from inference.selectors import served_models
from tenants.permissions import Action
from tenants.views.common import tenant_view


@dataclass(frozen=True)
class CatalogueEntry:
    model: str
    context_length: int
    price: pricing.Price | None  # None: not priced, so not charged
    regions: tuple[str, ...]  # "Sydney (ap-southeast-2)"


def region_label(region: str) -> str:
    name = REGION_NAMES.get(region)
    return f"{name} ({region})" if name else region


def catalogue(tenant) -> tuple[list[CatalogueEntry], object]:
    """Every model the backends serve, priced for ``tenant``; and the plan that prices them."""
    plan = pricing.tenant_plan(tenant)
    prices = pricing.prices_for_plan(plan)
    entries = [
        CatalogueEntry(model=name, context_length=model.context_length, price=prices.get(name),
                       regions=tuple(region_label(r) for r in sorted(model.regions)))
        for name, model in served_models().items()
    ]
    return entries, plan


@require_GET
@tenant_view(Action.TENANT_VIEW)
def models(request, access):
    entries, plan = catalogue(access.tenant)
    return render(request, "billing/catalogue.html", {"tenant": access.tenant, "entries": entries, "plan": plan})
