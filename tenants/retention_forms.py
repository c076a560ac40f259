"""Forms of transcript retention: the tenant's setting, an owner's "destroy now", and a staff member's
break-glass request (R-RET, R-SEC-3)."""

from __future__ import annotations

from django import forms

from audit.models import BreakGlassGrant
from tenants.models import MAX_RETENTION_DAYS


class RetentionForm(forms.Form):
    retention_days = forms.IntegerField(
        label="Keep transcripts for (days)", min_value=0, max_value=MAX_RETENTION_DAYS,
        help_text=f"0 keeps nothing (the default). From 1 to {MAX_RETENTION_DAYS} days (7 years): the prompts your "
                  "requests send to the model (after redaction, when it is on) and the replies it generates, "
                  "including conversation turns, are kept encrypted under your organisation's own key and deleted "
                  "when the period ends. Shortening it deletes older transcripts at the next daily run; turning it "
                  "off stops keeping new ones.",
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )


class DestroyTranscriptsForm(forms.Form):
    confirm = forms.CharField(
        label='Type "destroy" to confirm', max_length=20,
        help_text="Every kept transcript is deleted now and cannot be recovered. The audit trail keeps a record "
                  "that it happened and how many there were.",
    )

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip().lower()
        if value != "destroy":
            raise forms.ValidationError('Type "destroy" to confirm.')
        return value


class BreakGlassForm(forms.Form):
    reason = forms.CharField(
        label="Why you need to read this organisation's transcripts", max_length=BreakGlassGrant.REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required, and recorded in the audit trail with every transcript you open. Access ends on its "
                  "own after the set time.",
    )

    def clean_reason(self) -> str:
        reason = " ".join(self.cleaned_data["reason"].split())
        if not reason:
            raise forms.ValidationError("Give a reason.")
        return reason
