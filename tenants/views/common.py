"""What every console view shares: resolving the tenant (through ``tenants.access``) and checking the
matrix, before the view body runs."""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect

from tenants.access import require_staff_mfa, resolve_tenant
from tenants.permissions import Action
from tenants.redirects import safe_next_url


def tenant_view(action: Action):
    """Resolve ``slug`` to the caller's access (404 for non-members), require ``action`` (403 otherwise), and
    call ``view(request, access, ...)``."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request, slug: str, *args, **kwargs):
            access = resolve_tenant(request, slug)
            access.require(action)
            request.tenant_access = access
            request.wattle_acting_as = access.acting_as
            return view(request, access, *args, **kwargs)

        return wrapper

    return decorator


def staff_view(view):
    """Platform staff only (404 for everyone else), with a passkey used in this session."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise Http404
        require_staff_mfa(request)
        request.wattle_staff_page = True  # the layout shows staff banners (the cost guard's) on these pages
        return view(request, *args, **kwargs)

    return wrapper


def error_messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [m for msgs in exc.message_dict.values() for m in msgs]
    return list(exc.messages)


def flash_errors(request, exc: ValidationError) -> None:
    for message in error_messages(exc):
        messages.error(request, message)


def form_errors(form, exc: ValidationError) -> None:
    """A service's ValidationError onto the form: under the field it names, else above the form."""
    if hasattr(exc, "message_dict"):
        for name, messages_ in exc.message_dict.items():
            for message in messages_:
                form.add_error(name if name in form.fields else None, message)
    else:
        for message in exc.messages:
            form.add_error(None, message)


def back(request, default: str):
    """Redirect to a same-site ``next`` if the form gave one, else ``default``."""
    return redirect(safe_next_url(request, request.POST.get("next"), default))
