"""Where a ``next`` parameter may send someone: only back to this site.

Every ``next`` that is rendered as a link or followed as a redirect goes through ``safe_next_url``; nothing else
decides. A hand-rolled "starts with one slash" test misses ``/\\evil.example`` (browsers read the backslash as
a slash), so Django's ``url_has_allowed_host_and_scheme`` judges instead.
"""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def safe_next_url(request: HttpRequest, candidate: str | None, default: str = "") -> str:
    """``candidate`` if it leads to this site (this host, http(s), and https only when this request is),
    else ``default``."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return default
