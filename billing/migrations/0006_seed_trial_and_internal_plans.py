"""Seed the plans every installation starts with.

- **Trial** (the default, unless staff already chose one): what a new organisation gets when it signs up, so
  nobody is unlimited and free by accident: modest rates and a monthly allowance.
- **Internal**: for Wattle's own tenants (the `make run` demo): limits far above any local load test, so
  nothing is throttled while the rate-limit headers still show.

Existing plans with these slugs are left as staff set them.
"""

from decimal import Decimal

from django.db import migrations

PLANS = {
    "trial": {
        "name": "Trial",
        "rpm_limit": 20,
        "tpm_limit": 20_000,
        "max_concurrent": 2,
        "daily_token_limit": None,
        "monthly_token_budget": 1_000_000,
        "monthly_spend_cap_aud": Decimal("10.00"),
    },
    "internal": {
        "name": "Internal",
        "rpm_limit": 1_000_000,
        "tpm_limit": 1_000_000_000,
        "max_concurrent": 100_000,
        "daily_token_limit": None,
        "monthly_token_budget": 10**15,
        "monthly_spend_cap_aud": Decimal("1000000000.00"),
    },
}


def seed(apps, schema_editor) -> None:
    """Idempotent: also run by the test suite after a transactional test emptied the tables."""
    Plan = apps.get_model("billing", "Plan")
    has_default = Plan.objects.filter(is_default=True).exists()
    for slug, fields in PLANS.items():
        if Plan.objects.filter(slug=slug).exists():
            continue
        Plan.objects.create(slug=slug, is_default=slug == "trial" and not has_default, **fields)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_plan_updated_at"),
    ]

    operations = [
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
