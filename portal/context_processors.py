from __future__ import annotations

from django.conf import settings

from core.privacy import AUTOMATED_DECISIONS


def site(request) -> dict:
    return {
        "site_name": settings.WATTLE_SITE_NAME,
        "privacy_policy_version": settings.PRIVACY_POLICY_VERSION,
        "terms_version": settings.TERMS_VERSION,
        # The privacy policy, the tenant settings page and the data processing summary name the same decisions.
        "automated_decisions": AUTOMATED_DECISIONS,
    }
