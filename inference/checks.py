"""Start-up checks (APP 8): no inference backend outside the allowed Australian regions."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def backends_in_allowed_regions(app_configs, **kwargs):
    problems = []
    allowed = set(settings.ALLOWED_DATA_REGIONS)
    for item in settings.INFERENCE_BACKENDS:
        region = item.get("region", settings.INFERENCE_DEFAULT_REGION)
        if region not in allowed:
            problems.append(
                Error(
                    f"Inference backend {item['name']!r} is in region {region!r}, outside {sorted(allowed)}.",
                    hint="Tenant data must stay in Australia: remove the backend or fix its region.",
                    id="wattle.E001",
                )
            )
    if settings.AWS_REGION not in allowed:
        problems.append(Error(f"AWS_REGION={settings.AWS_REGION!r} is outside {sorted(allowed)}.", id="wattle.E002"))
    return problems


@register(Tags.security, deploy=True)
def api_key_pepper_is_separate(app_configs, **kwargs):
    from core.env import env_str

    if not env_str("API_KEY_PEPPER"):
        return [
            Error(
                "API_KEY_PEPPER is not set: API key hashes are keyed from SECRET_KEY.",
                hint="Set API_KEY_PEPPER (or API_KEY_PEPPER_FILE) so SECRET_KEY can rotate without invalidating keys.",
                id="wattle.E003",
            )
        ]
    return []
