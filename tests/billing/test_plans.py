"""Seeded plans: a new organisation starts on Trial (modest limits, a monthly allowance), never unlimited; the
default plan stays the default until staff choose another; "no limit" is only what staff set explicitly."""

from __future__ import annotations

import importlib
from decimal import Decimal

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError

from billing import limits, services
from billing.models import Plan
from billing.quota_reads import tenant_limits_explained
from tenants.models import Tenant
from tests.tenants.test_signup import _form

pytestmark = pytest.mark.django_db

TRIAL = {"rpm_limit": 20, "tpm_limit": 20_000, "max_concurrent": 2, "daily_token_limit": None,
         "monthly_token_budget": 1_000_000, "monthly_spend_cap_aud": Decimal("10.00")}


def test_an_organisation_that_signs_up_is_on_the_trial_plan_with_modest_limits(client):
    assert client.post("/accounts/signup/", _form()).status_code == 302
    tenant = Tenant.objects.get(name="Koala Contact")
    assert limits.tenant_limits(tenant) == TRIAL
    explained = tenant_limits_explained(tenant=tenant)
    assert explained.plan.slug == "trial" and explained.plan_is_default
    assert limits.for_data_plane(limits.tenant_limits(tenant)) == {
        "rpm": 20, "tpm": 20_000, "concurrent": 2, "month_tokens": 1_000_000, "month_spend": 10_000_000}


def test_internal_plan_is_seeded_far_above_a_local_load_test():
    internal = Plan.objects.get(slug="internal")
    assert not internal.is_default
    assert (internal.rpm_limit, internal.tpm_limit) == (1_000_000, 10**9)
    assert internal.max_concurrent >= 10_000 and internal.monthly_token_budget >= 10**12


def test_seeding_keeps_the_default_staff_chose_and_the_plans_they_changed(django_capture_on_commit_callbacks):
    seed = importlib.import_module("billing.migrations.0006_seed_trial_and_internal_plans").seed
    Plan.objects.filter(slug__in=["trial", "internal"]).delete()
    with django_capture_on_commit_callbacks(execute=True):
        services.plan_save(plan=Plan(slug="business", name="Business", rpm_limit=600, is_default=True))
    seed(apps, None)
    seed(apps, None)
    assert Plan.objects.get(is_default=True).slug == "business"
    assert Plan.objects.filter(slug="trial").count() == Plan.objects.filter(slug="internal").count() == 1


def test_the_default_plan_stays_the_default_until_another_takes_its_place(staff_client):
    response = staff_client.post("/staff/plans/trial/", {"name": "Trial", "rpm_limit": "20"})
    assert response.status_code == 400
    assert "make another plan the default" in response.content.decode()
    trial = Plan.objects.get(slug="trial")
    assert trial.is_default
    trial.is_default = False
    with pytest.raises(ValidationError):
        services.plan_save(plan=trial)  # the service holds the rule, whoever calls it


def test_no_limit_is_only_what_staff_choose(acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        unlimited = services.plan_save(plan=Plan(slug="unlimited", name="Unlimited"))
        assert limits.for_data_plane(limits.tenant_limits(acme))  # on Trial until staff say otherwise
        services.tenant_quota_set(tenant=acme, plan=unlimited)
    assert limits.for_data_plane(limits.tenant_limits(acme)) == {}
