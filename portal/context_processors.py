from __future__ import annotations

from django.conf import settings


def site(request) -> dict:
    return {
        "site_name": settings.WATTLE_SITE_NAME,
        "privacy_policy_version": settings.PRIVACY_POLICY_VERSION,
        "terms_version": settings.TERMS_VERSION,
    }
