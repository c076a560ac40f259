"""Every consumer of the limit kinds knows each kind of ``core.quotas.KINDS``: adding a kind is a row in the
table, its counter in the admission script and a migration, and this test names whatever else was missed."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import models

from billing.models import BudgetAlert, Plan, TenantQuota
from core import counters, quotas
from inference.gateway.limits import Limiter
from tenants.api.serializers import KeyLimitsSerializer, MetersSerializer
from tenants.forms import ApiKeyForm, KeyLimitsForm
from tenants.models import ApiKey

KINDS = pytest.mark.parametrize("kind", quotas.KINDS, ids=quotas.NAMES)


def test_names_and_fields_are_unique():
    assert len(set(quotas.NAMES)) == len(set(quotas.FIELDS)) == len(quotas.KINDS)


@KINDS
@pytest.mark.parametrize("model", [Plan, TenantQuota, ApiKey])
def test_every_limited_model_has_the_field(model, kind):
    field = model._meta.get_field(kind.field)
    assert field.null and field.blank
    expected = (models.DecimalField if kind.money
                else models.PositiveBigIntegerField if kind.big else models.PositiveIntegerField)
    assert type(field) is expected
    assert kind.field in ApiKey.LIMIT_FIELDS


@KINDS
def test_forms_and_the_api_accept_it(kind):
    for form in (KeyLimitsForm(), ApiKeyForm(grantable=frozenset({"inference"}))):
        assert kind.field in form.fields
    assert kind.field in KeyLimitsSerializer().fields
    assert kind.name in MetersSerializer().fields


@KINDS
def test_the_admission_script_counts_it(kind):
    counter, tag = counters.COUNTER_FIELDS[kind.name]
    if kind.window:
        assert counter and f"'{counter}'" in counters.ADMIT, "the script's HMGET must read its counter"
        assert {"minute": "m", "day": "d", "month": "mo"}[kind.window] == tag
    else:
        assert not counter  # concurrency: the scope's slots
    # The script's limits argument carries every kind, in the table's order.
    assert counters.limits_arg({kind.name: 7}).split(",")[quotas.KINDS.index(kind)] == "7"
    assert len(counters.limits_arg({}).split(",")) == len(quotas.KINDS)
    assert re.search(rf"for k = 1, {len(quotas.KINDS)} do", counters.ADMIT)


@KINDS
def test_a_refusal_names_it_and_says_when_to_retry(kind):
    limiter = Limiter.__new__(Limiter)  # only the refusal's wording: no Redis
    limiter._clock = lambda: 1_800_000_000.0
    windows = quotas.windows_at(1_800_000_000.0)
    limit = 10_000_000 if kind.money else 1000
    error = limiter._refusal({kind.name: limit}, quotas.KINDS.index(kind) + 1, windows)
    assert error.status == 429 and error.code == kind.code
    assert kind.refusal in error.message
    assert ("A$10.00" if kind.money else "1,000") in error.message
    assert int(error.headers["retry-after"]) >= 1


def test_budget_alerts_watch_exactly_the_budget_kinds():
    assert {value for value, _label in BudgetAlert.Budget.choices} == {kind.name for kind in quotas.BUDGETS}
    assert all(kind.window in ("day", "month") for kind in quotas.BUDGETS)


@KINDS
def test_console_meters_show_it(kind, db):
    from billing.quota_reads import LABELS, _meters

    windows = quotas.windows_at(1_800_000_000.0)
    meters = {m.kind: m for m in _meters({kind.field: Decimal("5") if kind.money else 5}, {}, {}, windows)}
    assert meters[kind.name].label == LABELS[kind.name] == kind.label
    assert meters[kind.name].limit is not None
    assert (meters[kind.name].resets_at is None) == (not kind.window)


def test_resolution_covers_every_kind():
    plan = {name: 1 for name in quotas.FIELDS}
    resolved = quotas.resolve(plan, {quotas.FIELDS[0]: 2})
    assert set(resolved.values) == set(quotas.FIELDS)
    assert resolved.sources[quotas.FIELDS[0]] == "override"
    assert set(quotas.for_data_plane(resolved.values)) == set(quotas.NAMES)
