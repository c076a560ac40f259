"""Token prices, resolved in one place: a plan's own price for a model (``PlanModelPrice``) where it has one, else
the platform's price list (``ModelPrice``).

Every reader that turns tokens into A$ goes through here: the Stripe sync (each plan's metered prices), the
projected bill, the rollups' cost, the request log, the limit counters' rebuild, the cost guard, and the prices
published for the data plane's spend cap (``billing.services.prices_publish``: the platform list and each plan's
own prices; the tenant record names its plan's list).

A price is a pair of Decimals in micro-A$ per token, which is the same number as A$ per million tokens (how pages
show it). Platform prices are stored per 1,000 tokens with six decimals and plan prices per million with four, so
both are whole numbers of 10⁻⁴ micro-A$ per token: ``scaled_table`` uses that for integer arithmetic where events
are rated in bulk.

Which plan prices a tenant: its ``TenantQuota.plan``, else the default plan (the plan its limits come from; a
running subscription's plan is copied there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

from billing.models import ModelPrice, Plan, PlanModelPrice, TenantQuota

if TYPE_CHECKING:
    from tenants.models import Tenant

THOUSAND = Decimal(1000)
# Prices in integer units of 10⁻⁴ micro-A$ per token (exact for both stored precisions).
UNITS_PER_MICRO = 10_000
_ZERO = Decimal(0)


class Price(NamedTuple):
    """Micro-A$ per token (= A$ per million tokens), input and output."""

    input: Decimal
    output: Decimal

    @property
    def input_per_1k(self) -> Decimal:
        return self.input / THOUSAND

    @property
    def output_per_1k(self) -> Decimal:
        return self.output / THOUSAND


def from_model_price(row: ModelPrice) -> Price:
    return Price(row.input_per_1k_aud * THOUSAND, row.output_per_1k_aud * THOUSAND)


def from_plan_price(row: PlanModelPrice) -> Price:
    return Price(row.input_per_1m_aud, row.output_per_1m_aud)


def cost_micro_aud(price: Price | None, prompt_tokens: int, completion_tokens: int) -> int:
    """What one request costs in micro-A$, rounded up as the data plane rounds it (nothing without a price)."""
    if price is None:
        return 0
    return math.ceil(prompt_tokens * price.input + completion_tokens * price.output)


def cost_aud(price: Price | None, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
    """The exact A$ of some tokens (None without a price)."""
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def scaled_table(prices: Mapping[str, Price]) -> dict[str, tuple[int, int]]:
    """Model → (input, output) in units of 10⁻⁴ micro-A$ per token, as integers (see the module's docstring)."""
    return {model: (int(p.input * UNITS_PER_MICRO), int(p.output * UNITS_PER_MICRO)) for model, p in prices.items()}


def price_list_name(plan_id: int) -> str:
    """A plan's price list as the data plane knows it (the prices record's ``lists``, ``TenantRecord.price_list``):
    its id, which never changes, where a slug might."""
    return str(plan_id)


# --- single reads ----------------------------------------------------------------------------------------------
def platform_prices() -> dict[str, Price]:
    """The platform's price list: what a model costs on a plan without a price of its own for it."""
    return {row.model: from_model_price(row) for row in ModelPrice.objects.all()}


def plan_own_prices(plan: Plan | int | None) -> dict[str, Price]:
    """The prices the plan sets itself, by model (not the platform's)."""
    if plan is None:
        return {}
    plan_id = plan if isinstance(plan, int) else plan.pk
    return {row.model: from_plan_price(row) for row in PlanModelPrice.objects.filter(plan_id=plan_id)}


def prices_for_plan(plan: Plan | int | None) -> dict[str, Price]:
    """Every priced model as a tenant on ``plan`` pays it: the plan's own price, else the platform's. Two queries."""
    return {**platform_prices(), **plan_own_prices(plan)}


def price_for(plan: Plan | int | None, model: str) -> Price | None:
    """One model's price on ``plan`` (None: the model has no price, and costs nothing)."""
    if plan is not None:
        plan_id = plan if isinstance(plan, int) else plan.pk
        own = PlanModelPrice.objects.filter(plan_id=plan_id, model=model).first()
        if own is not None:
            return from_plan_price(own)
    row = ModelPrice.objects.filter(model=model).first()
    return from_model_price(row) if row is not None else None


def tenant_plan(tenant: Tenant) -> Plan | None:
    """The plan that prices the tenant's usage: its own, else the default plan (as its limits are resolved)."""
    quota = TenantQuota.objects.filter(tenant=tenant).select_related("plan").first()
    if quota is not None and quota.plan is not None:
        return quota.plan
    return Plan.objects.filter(is_default=True).first()


# --- bulk reads ------------------------------------------------------------------------------------------------
@dataclass
class PriceBook:
    """Every price list at once, for jobs that rate many tenants' usage: three queries to load, then dictionary
    lookups (``for_plan`` merges a plan's list once and keeps it)."""

    default: dict[str, Price]
    own: dict[int, dict[str, Price]]  # plan id → the plan's own prices
    default_plan_id: int | None
    _merged: dict[int | None, dict[str, Price]] = field(default_factory=dict, repr=False)
    _scaled: dict[int | None, dict[str, tuple[int, int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls) -> PriceBook:
        own: dict[int, dict[str, Price]] = {}
        for row in PlanModelPrice.objects.all():
            own.setdefault(row.plan_id, {})[row.model] = from_plan_price(row)
        default_plan_id = Plan.objects.filter(is_default=True).values_list("pk", flat=True).first()
        return cls(default=platform_prices(), own=own, default_plan_id=default_plan_id)

    def for_plan(self, plan_id: int | None) -> dict[str, Price]:
        """The merged list of a plan (None: the platform list)."""
        merged = self._merged.get(plan_id)
        if merged is None:
            own = self.own.get(plan_id) if plan_id is not None else None
            merged = {**self.default, **own} if own else self.default
            self._merged[plan_id] = merged
        return merged

    def scaled_for_plan(self, plan_id: int | None) -> dict[str, tuple[int, int]]:
        """``for_plan`` as ``scaled_table`` integers (kept)."""
        scaled = self._scaled.get(plan_id)
        if scaled is None:
            scaled = self._scaled[plan_id] = scaled_table(self.for_plan(plan_id))
        return scaled

    def tenant_plans(self, tenant_ids: Iterable) -> dict:
        """Tenant id → the id of the plan pricing it (its own, else the default plan): one query for them all."""
        ids = set(tenant_ids)
        if not ids:
            return {}
        # Matched as text: callers hold ids as UUIDs or as strings.
        own = {str(tenant_id): plan_id for tenant_id, plan_id in TenantQuota.objects.filter(
            tenant_id__in=ids, plan__isnull=False).values_list("tenant_id", "plan_id")}
        return {tenant_id: own.get(str(tenant_id), self.default_plan_id) for tenant_id in ids}
