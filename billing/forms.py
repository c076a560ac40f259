"""Staff forms for plans, model prices (the platform's and a plan's own) and a tenant's limits, and the tenant
billing page's usage export. They validate; ``billing.services`` changes state."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from billing.limits import LIMIT_FIELDS
from billing.models import ModelPrice, Plan
from inference.selectors import declared_models
from tenants.forms import MODEL_NAME_MAX, LimitFieldsForm, NoSuffixMixin


class TenantQuotaForm(LimitFieldsForm):
    """A tenant's plan and the limits staff set above or below it. Empty fields follow the plan."""

    plan = forms.ModelChoiceField(queryset=Plan.objects.all(), required=False, to_field_name="slug", label="Plan",
                                  error_messages={"invalid_choice": "Choose one of the plans listed."})
    field_order = ["plan", *LIMIT_FIELDS]

    def __init__(self, *args, default_plan: Plan | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["plan"].empty_label = (
            f"The default plan (now {default_plan.name})" if default_plan else "The default plan (none set)"
        )
        self.fields["plan"].help_text = "The default plan follows whichever plan is marked as the default."


PLAN_PAYMENT_FIELDS = ["monthly_fee_aud", "included_tokens", "trial_days", "trial_card_required", "self_serve",
                       "requires_payment"]


class PlanForm(LimitFieldsForm):
    """A plan: its name, what it costs (synced to Stripe) and its default limits (empty: no limit of that kind)."""

    name = forms.CharField(label="Name", max_length=100)
    slug = forms.SlugField(label="Short name", max_length=50, help_text="Lower case, digits and dashes; fixed once "
                                                                        "created.")
    is_default = forms.BooleanField(label="Default plan", required=False,
                                    help_text="Tenants without a plan of their own are on the default plan.")
    monthly_fee_aud = forms.DecimalField(label="Monthly fee (A$, GST exclusive)", min_value=Decimal(0),
                                         max_digits=10, decimal_places=2, initial=Decimal(0), required=False)
    included_tokens = forms.IntegerField(label="Included tokens", min_value=0, max_value=10**15, initial=0,
                                         required=False,
                                         help_text="Input and output tokens of each model included every period.")
    trial_days = forms.IntegerField(label="Trial days", min_value=0, max_value=730, initial=0, required=False,
                                    help_text="Free days before the first charge (once per organisation).")
    trial_card_required = forms.BooleanField(label="Trial needs a card", required=False,
                                             help_text="Off: the trial starts without a card and ends unless one "
                                                       "is added.")
    self_serve = forms.BooleanField(label="Self-serve", required=False,
                                    help_text="Tenants can choose it in the console (Stripe Checkout).")
    requires_payment = forms.BooleanField(label="Requires payment", required=False,
                                          help_text="Serves only under a Stripe subscription in good standing.")
    field_order = ["name", "slug", "is_default", *PLAN_PAYMENT_FIELDS, *LIMIT_FIELDS]

    def __init__(self, *args, plan: Plan | None = None, **kwargs) -> None:
        self.plan = plan if plan is not None else Plan()
        if plan is not None and plan.pk:
            kwargs.setdefault("initial", {
                "name": plan.name, "slug": plan.slug, "is_default": plan.is_default,
                **{name: getattr(plan, name) for name in PLAN_PAYMENT_FIELDS},
                **{name: getattr(plan, name) for name in LIMIT_FIELDS},
            })
        super().__init__(*args, **kwargs)
        self.explain_empty(None, whose="")
        if self.plan.pk:
            self.fields["slug"].disabled = True

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the plan a name.")
        return name

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if Plan.objects.filter(slug=slug).exclude(pk=self.plan.pk).exists():
            raise ValidationError("Another plan already has this short name.")
        return slug

    def apply(self) -> Plan:
        """The plan with the form's values, unsaved (``billing.services.plan_save`` saves it)."""
        plan = self.plan
        plan.name = self.cleaned_data["name"]
        plan.slug = self.cleaned_data["slug"]
        plan.is_default = self.cleaned_data["is_default"]
        for name in PLAN_PAYMENT_FIELDS:  # an empty number is zero
            setattr(plan, name, self.cleaned_data[name] if self.cleaned_data[name] is not None else 0)
        for name, value in self.limits().items():
            setattr(plan, name, value)
        return plan


class ModelPriceForm(NoSuffixMixin, forms.Form):
    """The platform's price of a model: one the backends serve (``inference.selectors.declared_models``), or one
    already priced (so a price can still be changed while its model is out of service)."""

    model = forms.ChoiceField(label="Model", choices=[], error_messages={
        "invalid_choice": "%(value)s is not a model the backends serve: choose one from the list.",
        "required": "Choose a model."})
    # Entered per million tokens, as every page shows prices; stored per 1,000 with six decimals (three here).
    input_per_1m_aud = forms.DecimalField(label="Input, A$ per 1M tokens", min_value=Decimal(0), max_digits=10,
                                          decimal_places=3, help_text="Up to three decimals, GST exclusive.")
    output_per_1m_aud = forms.DecimalField(label="Output, A$ per 1M tokens", min_value=Decimal(0), max_digits=10,
                                           decimal_places=3, help_text="Up to three decimals, GST exclusive.")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        served = declared_models()
        priced = sorted(set(ModelPrice.objects.values_list("model", flat=True)) - set(served))
        self.fields["model"].choices = [("", "Choose a model"), *((m, m) for m in served),
                                        *((m, f"{m} (priced, not served now)") for m in priced)]
        if not served:
            self.fields["model"].help_text = "No backend serves a model yet: add a backend first."

    def price(self) -> dict:
        """The cleaned price as ``services.model_price_set`` takes it (per 1,000 tokens)."""
        return {"model": self.cleaned_data["model"],
                "input_per_1k_aud": self.cleaned_data["input_per_1m_aud"] / 1000,
                "output_per_1k_aud": self.cleaned_data["output_per_1m_aud"] / 1000}


class PlanModelPriceForm(NoSuffixMixin, forms.Form):
    """A plan's own price for one of the platform's priced models, per million tokens."""

    model = forms.ChoiceField(label="Model", error_messages={
        "invalid_choice": "Choose one of the models on the platform's price list.",
        "required": "Choose a model."})
    input_per_1m_aud = forms.DecimalField(label="Input, A$ per million tokens", min_value=Decimal(0), max_digits=14,
                                          decimal_places=4, help_text="Up to four decimals, GST exclusive.")
    output_per_1m_aud = forms.DecimalField(label="Output, A$ per million tokens", min_value=Decimal(0),
                                           max_digits=14, decimal_places=4, help_text="Up to four decimals, GST "
                                                                                      "exclusive.")

    def __init__(self, *args, models: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [("", "Choose a model"), *((m, m) for m in models)]


class PlanModelPriceRemoveForm(forms.Form):
    model = forms.CharField(max_length=MODEL_NAME_MAX)


# --- tenants: the billing page's usage export ------------------------------------------------------
EXPORT_MAX_DAYS = 366
EXPORT_FIRST_DAY = date(2000, 1, 1)
EXPORT_LAST_DAY = date(2999, 12, 31)


class UsageExportForm(NoSuffixMixin, forms.Form):
    """The CSV export's range: whole Sydney days, both ends included, at most a year (the export reads daily
    rollups, so its cost grows with the days asked for: the bound keeps every export small)."""

    start = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}), input_formats=["%Y-%m-%d"],
                            error_messages={"required": "Give the first day (YYYY-MM-DD).",
                                            "invalid": "Give the first day as YYYY-MM-DD."})
    end = forms.DateField(label="To", widget=forms.DateInput(attrs={"type": "date"}), input_formats=["%Y-%m-%d"],
                          error_messages={"required": "Give the last day (YYYY-MM-DD).",
                                          "invalid": "Give the last day as YYYY-MM-DD."})

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            raise ValidationError("“From” must be on or before “To”.")
        # Days at the calendar's ends overflow when turned into Sydney times: a 400, not a 500.
        if any(day and not EXPORT_FIRST_DAY <= day <= EXPORT_LAST_DAY for day in (start, end)):
            raise ValidationError(f"Give days between {EXPORT_FIRST_DAY.isoformat()} and "
                                  f"{EXPORT_LAST_DAY.isoformat()}.")
        if start and end and (end - start).days >= EXPORT_MAX_DAYS:
            raise ValidationError(f"Export at most {EXPORT_MAX_DAYS} days at a time.")
        return data
