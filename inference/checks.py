"""Start-up checks (APP 8): no inference backend outside the allowed Australian regions."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

# The AWS regions in Australia: Sydney and Melbourne.
AUSTRALIAN_REGIONS = frozenset({"ap-southeast-2", "ap-southeast-4"})


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
    # ALLOWED_DATA_REGIONS is a setting, so the checks above would pass anything it named: it may only narrow the
    # Australian regions, never add another (COMPLIANCE R-REG-1).
    foreign = sorted(allowed - AUSTRALIAN_REGIONS)
    if foreign:
        problems.append(Error(f"ALLOWED_DATA_REGIONS names regions outside Australia: {foreign}.",
                              hint=f"Allow only {sorted(AUSTRALIAN_REGIONS)}.", id="wattle.E005"))
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


@register(Tags.security, Tags.database, deploy=True)
def stored_backends_in_allowed_regions(app_configs, databases=None, **kwargs):
    """Backends added in the staff console live in the database, which a check reads only when asked
    (``check --deploy --database default``): before ``migrate`` there may be no table to read."""
    from django.db import DatabaseError

    from inference.models import Backend

    problems = []
    allowed = list(settings.ALLOWED_DATA_REGIONS)
    for alias in databases or ():
        try:
            outside = list(Backend.objects.using(alias).exclude(region__in=allowed).values_list("name", "region"))
        except DatabaseError as exc:
            problems.append(Error(f"Cannot read the inference backends to check their regions: {exc}",
                                  hint="Run migrate, then the check again.", id="wattle.E004"))
            continue
        problems.extend(
            Error(f"Inference backend {name!r} (database) is in region {region!r}, outside {sorted(allowed)}.",
                  hint="Tenant data must stay in Australia: remove the backend or fix its region.", id="wattle.E001")
            for name, region in outside
        )
    return problems
