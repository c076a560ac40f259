"""Forms of the breach register's staff pages (``billing.staff_incidents``)."""

from __future__ import annotations

from django import forms

from audit.models import Incident

_WHEN = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


def _when(label: str, *, required: bool, help_text: str = "") -> forms.DateTimeField:
    return forms.DateTimeField(label=label, required=required, widget=_WHEN, help_text=help_text,
                               input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"])


class IncidentForm(forms.Form):
    title = forms.CharField(max_length=200)
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 5}),
                              help_text="What happened, what data, what is known. No end-customer content.")
    became_aware_at = _when("Became aware at (Sydney time)", required=True,
                            help_text="The 30-day assessment clock starts here.")
    window_start = _when("Affected from", required=False)
    window_end = _when("Affected until", required=False)
    # A pasted whole key is accepted and cut to its id here, so the secret is never stored or audited.
    key_id = forms.CharField(label="API key id", max_length=200, required=False, help_text="e.g. the id in wtl_<id>_…")
    backend = forms.CharField(max_length=100, required=False)
    component = forms.CharField(max_length=32, required=False, help_text="An API endpoint, e.g. chat.completions.")

    def clean_key_id(self) -> str:
        value = self.cleaned_data["key_id"].strip()
        key_id = value.removeprefix("wtl_").split("_", 1)[0]
        if len(key_id) > 16:
            raise forms.ValidationError("That is not an API key id.")
        return key_id


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=Incident.Decision.choices, widget=forms.RadioSelect)
    reasons = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=5000,
                              help_text="The basis of the assessment: likely serious harm, remedial action taken.")


class NotifyForm(forms.Form):
    tenants = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, choices=())

    def __init__(self, *args, slugs: list[tuple[str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["tenants"].choices = slugs
