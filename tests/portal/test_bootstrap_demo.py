from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants import keys
from tenants.models import ApiKey, Tenant


@pytest.fixture
def debug_var_dir(settings, tmp_path):
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    return tmp_path


def _run() -> dict:
    out = StringIO()
    call_command("bootstrap_demo", json=True, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_bootstrap_demo_is_idempotent(debug_var_dir):
    first = _run()
    second = _run()
    assert first == second
    assert Tenant.objects.filter(name="Demo Contact Centre").count() == 1
    assert ApiKey.objects.count() == 1
    key_id, secret = keys.parse_key(first["api_key"])
    assert keys.secret_matches(secret, ApiKey.objects.get(key_id=key_id).secret_hash)
    assert (debug_var_dir / "demo-credentials.json").stat().st_mode & 0o077 == 0


@pytest.mark.django_db
def test_bootstrap_demo_replaces_a_revoked_demo_key(debug_var_dir):
    first = _run()
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")
    second = _run()
    assert second["api_key"] != first["api_key"]
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1


@pytest.mark.django_db
def test_bootstrap_demo_refuses_to_run_in_production(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError):
        call_command("bootstrap_demo")


@pytest.mark.django_db
def test_bootstrap_demo_puts_the_demo_tenant_on_the_internal_plan_and_says_so(debug_var_dir):
    from audit.models import AuditEntry
    from billing import limits

    assert _run()["plan"] == "Internal"
    out = StringIO()
    call_command("bootstrap_demo", stdout=out)
    assert "on the Internal plan (1,000,000 requests and 1,000,000,000 tokens a minute)" in out.getvalue()
    tenant = Tenant.objects.get(name="Demo Contact Centre")
    effective = limits.tenant_limits(tenant)
    assert (effective["rpm_limit"], effective["tpm_limit"]) == (1_000_000, 10**9)  # explicit, not the default
    assert AuditEntry.objects.filter(action="tenant.limits.update", tenant=tenant).count() == 1  # once



@pytest.mark.django_db
def test_bootstrap_demo_creates_the_self_serve_paid_plans_once_and_syncs_them_to_stripe(debug_var_dir, stripe_fake):
    from billing.models import ModelPrice, Plan, StripePrice

    _run()
    _run()
    developer, business = Plan.objects.get(slug="developer"), Plan.objects.get(slug="business")
    assert developer.self_serve and developer.requires_payment and developer.trial_days == 14
    assert not developer.trial_card_required and business.trial_days == 0
    assert ModelPrice.objects.count() >= 2
    assert developer.stripe_product_id and business.stripe_product_id
    # Once: a second run found everything in step and created nothing more.
    assert StripePrice.objects.filter(plan=developer).count() == 1 + 2 * ModelPrice.objects.count()
