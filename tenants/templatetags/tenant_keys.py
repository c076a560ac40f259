"""What the console offers on each key: only the actions the caller's role may take on that key's scopes."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def key_actions(access, api_key) -> frozenset[str]:
    """``{% if "keys.revoke" in access|key_actions:key %}``: empty outside a tenant."""
    if access is None:
        return frozenset()
    return access.key_actions(api_key)
