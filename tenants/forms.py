"""Forms for sign-up (through allauth), the team and the keys pages. They validate; services change state."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal

from allauth.account.forms import SignupForm as AllauthSignupForm
from allauth.core import context
from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.html import escape, format_html

from core import ccaas, quotas
from inference.selectors import declared_models
from tenants.models import ApiKey, Role, Tenant
from tenants.validators import validate_abn

STATE_CHOICES = [("", "Choose a state or territory"), *Tenant.State.choices]


def one_line(name: str) -> str:
    """An organisation's name on one line, runs of whitespace as one space: emails to other people quote it
    (an invitation), where line breaks would let it add paragraphs that read as ours."""
    return " ".join(name.split())


class NoSuffixMixin:
    """Labels read as written ("Email", not "Email:"): cleaner for screen readers and for tests alike."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


MODEL_NAME_MAX = 200


class SignupForm(NoSuffixMixin, AllauthSignupForm):
    """allauth's sign-up plus the organisation the person is signing up for, and their acceptance of the
    terms and privacy policy. Arriving from an invitation, there is no organisation to create."""

    organisation = forms.CharField(label="Organisation name", max_length=200,
                                   widget=forms.TextInput(attrs={"autocomplete": "organization"}))
    billing_email = forms.EmailField(
        label="Billing email", help_text="Where tax invoices go. It can be a shared mailbox.",
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    abn = forms.CharField(label="ABN (optional)", required=False, max_length=20,
                          help_text="Your Australian Business Number, printed on tax invoices.")
    state = forms.ChoiceField(label="State or territory", choices=STATE_CHOICES)
    accept_terms = forms.BooleanField(required=True)

    field_order = ["email", "organisation", "billing_email", "abn", "state", "password1", "password2",
                   "accept_terms"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from tenants.adapters import pending_invitation

        self.fields["accept_terms"].label = format_html(
            'I have read the collection notice above and accept the <a href="{}">terms of service</a> '
            '(version {}) and the <a href="{}">privacy policy</a> (version {}).',
            reverse("terms"), settings.TERMS_VERSION, reverse("privacy"), settings.PRIVACY_POLICY_VERSION,
        )
        self.fields["accept_terms"].error_messages["required"] = (
            "You need to accept the terms of service and the privacy policy to create an account."
        )
        request = getattr(context, "request", None)
        self.invitation = pending_invitation(request) if request is not None else None
        if self.invitation is not None:
            for name in ("organisation", "billing_email", "abn", "state"):
                del self.fields[name]
            self.fields["email"].initial = self.invitation.email

    def clean_email(self):
        email = super().clean_email()
        if self.invitation is not None and email and email.lower() != self.invitation.email.lower():
            raise ValidationError(
                f"This invitation is for {self.invitation.email}. Sign up with that address to accept it."
            )
        return email

    def clean_abn(self) -> str:
        return validate_abn(self.cleaned_data.get("abn", ""))

    def clean_organisation(self) -> str:
        name = one_line(self.cleaned_data["organisation"])
        if not name:
            raise ValidationError("Enter your organisation's name.")
        return name


class TenantSettingsForm(NoSuffixMixin, forms.Form):
    name = forms.CharField(label="Organisation name", max_length=200)
    billing_email = forms.EmailField(label="Billing email")
    abn = forms.CharField(label="ABN (optional)", required=False, max_length=20)
    state = forms.ChoiceField(label="State or territory", choices=STATE_CHOICES, required=False)

    def clean_abn(self) -> str:
        return validate_abn(self.cleaned_data.get("abn", ""))

    def clean_name(self) -> str:
        name = one_line(self.cleaned_data["name"])
        if not name:
            raise ValidationError("Enter the organisation's name.")
        return name


class RedactionForm(NoSuffixMixin, forms.Form):
    redaction = forms.ChoiceField(
        label="Personal information in API requests", choices=Tenant.Redaction.choices, widget=forms.RadioSelect,
        help_text="Australian identifiers (TFN, Medicare, ABN, ACN, card numbers, IHI, phone numbers, email, "
                  "bank details, passport and licence numbers) are replaced by placeholders before a prompt "
                  "reaches the model. A request may also ask for it with the header x-wattle-redact: true.",
    )


class ConversationSettingsForm(NoSuffixMixin, forms.Form):
    """The conversation API's escalation rule, sentiment scorer and analytics sample (``core.sentiment``)."""

    escalation_threshold = forms.FloatField(
        label="Negative sentiment threshold", min_value=-1.0, max_value=1.0,
        help_text="A customer turn scoring at or below this (from -1, very negative, to 1) counts as negative.")
    escalation_turns = forms.IntegerField(
        label="Negative turns in a row that escalate", min_value=0, max_value=20,
        help_text="0 never escalates on sentiment alone (trigger phrases still do).")
    escalation_phrases = forms.CharField(
        label="Trigger phrases", required=False, widget=forms.Textarea(attrs={"rows": 6}),
        help_text=f"One per line, up to {ccaas.MAX_ESCALATION_PHRASES}: a customer turn containing any of them, as "
                  "whole words in any case, escalates at once.")
    sentiment_scorer = forms.ChoiceField(label="Sentiment scorer", choices=Tenant.SentimentScorer.choices,
                                         widget=forms.RadioSelect)
    sentiment_model = forms.CharField(
        label="Embedding model (for the embedding scorer)", required=False, max_length=200,
        help_text="The turn is embedded with this model (billed like any embeddings request); if that fails, the "
                  "lexicon scores it and the fallback is recorded.")
    analytics_sample_percent = forms.IntegerField(
        label="Post-call analytics sample (%)", min_value=0, max_value=100,
        help_text="Percentage of closed conversations that get a summary and a QA score.")

    def clean_escalation_phrases(self) -> str:
        lines = [" ".join(line.split()) for line in self.cleaned_data.get("escalation_phrases", "").splitlines()]
        phrases = [line for line in lines if line]
        if len(phrases) > ccaas.MAX_ESCALATION_PHRASES:
            raise ValidationError(f"Enter at most {ccaas.MAX_ESCALATION_PHRASES} phrases.")
        if any(len(p) > ccaas.MAX_ESCALATION_PHRASE_CHARS for p in phrases):
            raise ValidationError(f"Keep each phrase to {ccaas.MAX_ESCALATION_PHRASE_CHARS} characters.")
        if any(not p.isprintable() for p in phrases):
            raise ValidationError("Phrases are plain text.")
        return "\n".join(phrases)

    def clean(self):
        cleaned = super().clean()
        model = (cleaned.get("sentiment_model") or "").strip()
        cleaned["sentiment_model"] = model
        if cleaned.get("sentiment_scorer") == Tenant.SentimentScorer.EMBEDDING:
            served = declared_models()
            if not model:
                self.add_error("sentiment_model", "Choose the embedding model the embedding scorer uses.")
            elif served and model not in served:
                self.add_error("sentiment_model", "No backend serves a model by that name.")
        return cleaned


class InviteForm(NoSuffixMixin, forms.Form):
    email = forms.EmailField(label="Email address", widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(label="Role", choices=[])

    def __init__(self, *args, roles: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, Role(r).label) for r in roles]
        self.fields["role"].initial = Role.DEVELOPER if Role.DEVELOPER in roles else (roles[0] if roles else None)


class RoleForm(NoSuffixMixin, forms.Form):
    role = forms.ChoiceField(label="Role", choices=[])

    def __init__(self, *args, roles: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, Role(r).label) for r in roles]


class TransferOwnershipForm(NoSuffixMixin, forms.Form):
    confirm = forms.BooleanField(label="I understand I will become an admin of this organisation.")


def parse_models(raw: str) -> list[str]:
    models = [line.strip() for line in raw.replace(",", "\n").splitlines() if line.strip()]
    if len(models) > 50:
        raise ValidationError("List at most 50 models.")
    for model in models:
        if len(model) > MODEL_NAME_MAX or any(c.isspace() for c in model):
            raise ValidationError(f"{model[:40]!r} is not a model name (no spaces, at most 200 characters).")
    return list(dict.fromkeys(models))


UNKNOWN_MODEL = "{models} is not a model the backends serve."


def check_served(models: list[str]) -> list[str]:
    """``models`` if each is one the backends serve (``inference.selectors.declared_models``); else the error
    says which are not and what is served, so a typo (or another provider's name) is caught when the key is
    made rather than as a 404 on its first request."""
    if not models:
        return models
    served = declared_models()
    unknown = [m for m in models if m not in served]
    if unknown:
        names = ", ".join(repr(m[:60]) for m in unknown[:5])
        offer = f"Served models: {', '.join(served[:20])}." if served else "No backend serves a model yet."
        raise ValidationError(f"{UNKNOWN_MODEL.format(models=names)} {offer}")
    return models


def _served_choices() -> list[tuple[str, str]]:
    return [(m, m) for m in declared_models()]


def _models_help_text() -> str:
    if declared_models():
        return "The models the key may call. Choose none to allow every model, including ones added later."
    return "No backend serves a model yet, so the key will allow every model."


_models_help = lazy(_models_help_text, str)  # evaluated when the help text is shown


def limit_form_field(kind: quotas.LimitKind) -> forms.Field:
    label = quotas.form_label(kind)
    if kind.money:
        return forms.DecimalField(label=label, required=False, min_value=Decimal("0.01"), max_digits=12,
                                  decimal_places=2)
    return forms.IntegerField(label=label, required=False, min_value=1, max_value=kind.maximum)


class _LimitFieldsBase(NoSuffixMixin, forms.Form):
    """The kinds of limit (``core.quotas.KINDS``), for plans, tenant overrides and keys. Empty means "not set
    here": no limit on a plan, the plan's on a tenant, the organisation's on a key (``explain_empty`` says which,
    with the value)."""

    def limits(self) -> dict:
        return {name: self.cleaned_data.get(name) for name in ApiKey.LIMIT_FIELDS}

    def explain_empty(self, fallback: dict | None, *, whose: str) -> None:
        """Help text under each field: what an empty field means here, e.g. "Empty: the plan's limit (600)"."""
        whose = escape(whose)  # Django renders help text as HTML, and ``whose`` can hold a plan's name
        for name in ApiKey.LIMIT_FIELDS:
            value = (fallback or {}).get(name)
            if value is None:
                text = "Empty: no limit"
            else:
                shown = quotas.format_aud(value) if quotas.BY_FIELD[name].money else f"{value:,}"
                text = f"Empty: {whose} limit ({shown})"
            self.fields[name].help_text = text


# Declared through the forms metaclass, a field per kind in the table's order.
LimitFieldsForm = type(_LimitFieldsBase)(
    "LimitFieldsForm", (_LimitFieldsBase,), {"__module__": __name__, "__qualname__": "LimitFieldsForm",
                                             **{kind.field: limit_form_field(kind) for kind in quotas.KINDS}},
)


class KeyLimitsForm(LimitFieldsForm):
    """A key's own limits, set by the organisation's owners and admins (or staff) after creation."""


class ApiKeyForm(LimitFieldsForm):
    field_order = ["name", "scopes", "allowed_models", "expires_on", *ApiKey.LIMIT_FIELDS]

    name = forms.CharField(label="Name", max_length=100, help_text="What the key is for, e.g. “IVR production”.")
    scopes = forms.MultipleChoiceField(
        label="Scopes", choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple,
        initial=[ApiKey.Scope.INFERENCE],
    )
    allowed_models = forms.MultipleChoiceField(
        label="Allowed models (optional)", required=False, widget=forms.CheckboxSelectMultiple, choices=[],
        help_text="The models the key may call. Choose none to allow every model, including ones added later.",
        error_messages={"invalid_choice": "%(value)s is not a model the backends serve: choose from the list."},
    )
    expires_on = forms.DateField(
        label="Expires on (optional)", required=False, widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The key stops working at the start of this day (Sydney time).",
    )
    def __init__(self, *args, grantable: frozenset[str], **kwargs) -> None:
        """``grantable``: the scopes the creator's role may give (``permissions.grantable_scopes``)."""
        super().__init__(*args, **kwargs)
        choices = [(scope, label) for scope, label in ApiKey.Scope.choices if scope in grantable]
        if len(choices) < len(ApiKey.Scope.choices):
            self.fields["scopes"].help_text = "Only owners and admins can grant management scopes."
        self.fields["scopes"].choices = choices
        # Read when the field is rendered or checked, not when the form is made (``_served_choices``).
        self.fields["allowed_models"].choices = _served_choices
        self.fields["allowed_models"].help_text = _models_help()

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the key a name.")
        return name

    def clean_allowed_models(self) -> list[str]:
        return list(dict.fromkeys(self.cleaned_data.get("allowed_models") or []))

    def clean_expires_on(self):
        day = self.cleaned_data.get("expires_on")
        if day is not None and day <= timezone.localdate():
            raise ValidationError("Choose a day after today.")
        return day

    def expires_at(self) -> datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


GRACE_CHOICES = [
    ("0", "Stop the old secret now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
]


class RotateKeyForm(NoSuffixMixin, forms.Form):
    grace = forms.TypedChoiceField(
        label="Keep the old secret working for", choices=GRACE_CHOICES, coerce=int, initial="86400",
        help_text="Time to deploy the new secret. After it, the old one stops working.",
    )

    def grace_period(self) -> timedelta:
        return timedelta(seconds=self.cleaned_data["grace"])


class SuspendForm(NoSuffixMixin, forms.Form):
    reason = forms.CharField(label="Reason", max_length=500, widget=forms.Textarea(attrs={"rows": 3}),
                             help_text="Recorded in the audit trail and shown to the tenant.")

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise ValidationError("Give a reason.")
        return reason


class ActAsForm(NoSuffixMixin, forms.Form):
    reason = forms.CharField(label="Reason (e.g. the support ticket)", max_length=500)

    def __init__(self, *args, **kwargs) -> None:
        # The tenant page also has the suspension form, whose field has the same name: keep the ids apart.
        kwargs.setdefault("auto_id", "id_act_as_%s")
        super().__init__(*args, **kwargs)

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise ValidationError("Give a reason.")
        return reason


class TenantSearchForm(NoSuffixMixin, forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=200)
    status = forms.ChoiceField(label="Status", required=False, choices=[("", "Any status"), *Tenant.Status.choices])


class UsageFilterForm(NoSuffixMixin, forms.Form):
    since = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ValidationError("“From” must be on or before “To”.")
        if since and until and (until - since).days > 366:
            raise ValidationError("Choose at most a year at a time.")
        return data
