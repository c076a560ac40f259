"""Turns the access rules of ``tenants.access`` into responses for console pages.

- ``MfaRequired`` raised anywhere in a view becomes a redirect to the place to set up (or use) the factor.
- Every ``/staff/`` page (the staff console and Django's admin) needs a staff member who has used a passkey
  in this session.
"""

from __future__ import annotations

from django.http import HttpResponseRedirect

from tenants.access import MfaRequired, staff_mfa_state
from tenants.redirects import safe_next_url

STAFF_PREFIX = "/staff/"


def _redirect(request, url: str):
    if getattr(request, "htmx", False):
        response = HttpResponseRedirect(url)
        response.status_code = 204
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url)


class AccessGateMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(STAFF_PREFIX):
            user = request.user
            if user.is_authenticated and user.is_staff:
                state = staff_mfa_state(request)
                if state is not None:
                    error = MfaRequired(staff=True, kind=state)
                    return _redirect(request, error.redirect_url(safe_next_url(request, request.get_full_path(), "/")))
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, MfaRequired):
            # Back to this page afterwards (for a POST, the page the form was on).
            next_url = request.get_full_path() if request.method == "GET" else request.headers.get("Referer")
            request.session["wattle_mfa_next"] = safe_next_url(request, next_url, "/")
            return _redirect(request, exception.redirect_url(request.session["wattle_mfa_next"]))
        return None
