"""Create (idempotently) what `make run` needs: a demo tenant on the Internal plan, a staff admin and an API key,
and two self-serve paid plans (Developer, with a 14-day trial without a card, and Business) with model prices, so
the billing page has plans to choose; with Stripe configured (e.g. ``STRIPE_API_BASE`` at the stand-in) they are
synced to it.

The demo tenant is put explicitly on the Internal plan (seeded by billing's migrations): limits far above a
local load test, so the printed curl and `make bench` are never throttled while every answer still carries the
rate-limit headers.

Development only. The plaintext demo key and admin password are kept in var/ (git-ignored) so a second run
prints the same credentials instead of piling up new ones.
"""

from __future__ import annotations

import json
import secrets
from decimal import Decimal

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from billing import plan_sync, snapshot, stripe_gateway
from billing.models import ModelPrice, Plan, TenantQuota
from billing.services import model_price_set, plan_save, tenant_quota_set
from inference.services import backends_seed_from_settings
from tenants import keys, services
from tenants.models import ApiKey, Membership, Role, Tenant

DEMO_TENANT = "Demo Contact Centre"
DEMO_ADMIN_EMAIL = "admin@wattle.local"
DEMO_PLAN = "internal"
# A$ per 1,000 tokens (input, output), GST exclusive: set only where staff haven't priced the model.
DEMO_PRICES = {
    "mistralai/Mistral-7B-Instruct-v0.3": (Decimal("0.0003"), Decimal("0.0009")),
    "mistralai/Mistral-Large-Instruct-2411": (Decimal("0.003"), Decimal("0.009")),
}
PAID_PLANS = {
    "developer": {"name": "Developer", "monthly_fee_aud": Decimal("49.00"), "included_tokens": 2_000_000,
                  "trial_days": 14, "trial_card_required": False, "rpm_limit": 300, "tpm_limit": 200_000,
                  "max_concurrent": 10, "monthly_token_budget": 100_000_000,
                  "monthly_spend_cap_aud": Decimal("500.00")},
    "business": {"name": "Business", "monthly_fee_aud": Decimal("499.00"), "included_tokens": 50_000_000,
                 "trial_days": 0, "trial_card_required": True, "rpm_limit": 3_000, "tpm_limit": 2_000_000,
                 "max_concurrent": 100, "monthly_token_budget": 2_000_000_000,
                 "monthly_spend_cap_aud": Decimal("10000.00")},
}


class Command(BaseCommand):
    help = "Create the demo tenant, staff admin and API key (development only); prints the credentials."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the credentials as JSON.")

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("bootstrap_demo is for development (DEBUG=true) only.")
        creds_file = settings.VAR_DIR / "demo-credentials.json"
        saved = json.loads(creds_file.read_text()) if creds_file.exists() else {}

        backends_seed_from_settings()

        user_model = get_user_model()
        admin = user_model.objects.filter(email=DEMO_ADMIN_EMAIL).first()
        password = saved.get("admin_password")
        if admin is None or not password or not admin.check_password(password):
            password = secrets.token_urlsafe(12)
            if admin is None:
                admin = user_model.objects.create_user(
                    username="admin", email=DEMO_ADMIN_EMAIL, password=password, is_staff=True, is_superuser=True
                )
            else:
                admin.set_password(password)
                admin.save(update_fields=["password"])
        EmailAddress.objects.update_or_create(
            user=admin, email=DEMO_ADMIN_EMAIL, defaults={"verified": True, "primary": True}
        )

        tenant = Tenant.objects.filter(name=DEMO_TENANT).first()
        if tenant is None:
            tenant = services.tenant_create(name=DEMO_TENANT, owner=admin, billing_email=DEMO_ADMIN_EMAIL, state="NSW")
        Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": Role.OWNER})
        plan = Plan.objects.filter(slug=DEMO_PLAN).first()
        if plan is None:
            raise CommandError(f"The {DEMO_PLAN!r} plan is missing: run `manage.py migrate`, which seeds it.")
        if not TenantQuota.objects.filter(tenant=tenant, plan=plan).exists():
            tenant_quota_set(tenant=tenant, plan=plan, actor=admin)

        api_key = None
        plaintext = saved.get("api_key")
        parsed = keys.parse_key(plaintext) if plaintext else None
        if parsed:
            api_key = ApiKey.objects.filter(key_id=parsed[0], tenant=tenant, revoked_at__isnull=True).first()
            if api_key is not None and not keys.secret_matches(parsed[1], api_key.secret_hash):
                api_key = None
        if api_key is None:
            issued = services.api_key_create(tenant=tenant, name="Demo key", created_by=admin)
            plaintext = issued.plaintext
        self._paid_plans(admin)
        snapshot.rebuild()

        creds = {"admin_email": DEMO_ADMIN_EMAIL, "admin_password": password, "api_key": plaintext}
        creds_file.write_text(json.dumps(creds))
        creds_file.chmod(0o600)
        if options["json"]:
            self.stdout.write(json.dumps({**creds, "plan": plan.name}))
        else:
            self.stdout.write(f"Admin login: {DEMO_ADMIN_EMAIL} / {password}")
            self.stdout.write(f"Demo API key: {plaintext}")
            self.stdout.write(f"Demo tenant: {DEMO_TENANT}, on the {plan.name} plan ({_describe(plan)})")


    def _paid_plans(self, admin) -> None:
        """The self-serve paid plans and the model prices they charge, through the services (audited); plans and
        prices staff already have are left as they are. Synced to Stripe when it is configured."""
        for model, (input_price, output_price) in DEMO_PRICES.items():
            if not ModelPrice.objects.filter(model=model).exists():
                model_price_set(model=model, input_per_1k_aud=input_price, output_per_1k_aud=output_price,
                                actor=admin)
        for slug, fields in PAID_PLANS.items():
            plan = Plan.objects.filter(slug=slug).first()
            if plan is None:
                plan = plan_save(plan=Plan(slug=slug, self_serve=True, requires_payment=True, **fields), actor=admin)
            if stripe_gateway.configured():
                try:
                    plan_sync.plan_stripe_sync(plan=plan, actor=admin)
                except stripe_gateway.StripeError as exc:
                    self.stderr.write(f"Plan {plan.name} was not synced to Stripe ({exc}); it is retried later.")


def _describe(plan: Plan) -> str:
    return f"{plan.rpm_limit:,} requests and {plan.tpm_limit:,} tokens a minute" if plan.rpm_limit else "no rate limits"
