from __future__ import annotations

from django import forms
from django.conf import settings

from core.backend_urls import check_backend_url
from inference.models import Backend


class BackendForm(forms.ModelForm):
    """A vLLM replica. Regions are limited to the allowed Australian ones; the API key is write-only."""

    served_models = forms.CharField(
        required=False, label="Served models",
        help_text="Comma-separated. Leave empty to discover them from the replica's /v1/models; list them for a "
                  "replica that scales to zero.",
    )
    base_url = forms.URLField(
        max_length=300, assume_scheme="https", label="Base URL",
        help_text="The replica's address without /v1, e.g. http://vllm-7b.internal:8000",
    )
    region = forms.ChoiceField(choices=())
    new_api_key = forms.CharField(
        required=False, label="vLLM API key", widget=forms.PasswordInput(render_value=False),
        help_text="Only if the replica runs with --api-key. Leave empty to keep the current one.",
    )

    class Meta:
        model = Backend
        fields = ["name", "base_url", "region", "served_models", "weight", "max_concurrency", "enabled", "draining"]

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")  # labels as the console writes them ("Name", not "Name:")
        super().__init__(*args, **kwargs)
        self.fields["region"].choices = [(r, r) for r in settings.ALLOWED_DATA_REGIONS]
        if self.instance.pk:
            self.fields["name"].disabled = True
            self.initial["served_models"] = ", ".join(self.instance.served_models or [])

    def clean_served_models(self) -> list[str]:
        raw = self.cleaned_data.get("served_models") or ""
        return [m.strip() for m in raw.split(",") if m.strip()]

    def clean_base_url(self) -> str:
        url = self.cleaned_data["base_url"].rstrip("/")
        if url.endswith("/v1"):
            raise forms.ValidationError("Give the replica's base URL without /v1.")
        try:
            check_backend_url(url, resolve=True)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return url

    def clean_weight(self) -> int:
        weight = self.cleaned_data["weight"]
        if weight < 1:
            raise forms.ValidationError("Weight must be at least 1.")
        return weight
