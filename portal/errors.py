"""Error pages that never show a stack trace, in HTML for people and JSON for API clients.

Every JSON error, from the management API (DRF) and from Django's own handlers, has one shape, the same as
the ``/v1`` API's: ``{"error": {"message", "type", "code", "param"}}``.
"""

from __future__ import annotations

import logging

from django.http import JsonResponse
from django.shortcuts import render
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger("wattle.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {
    exceptions.ParseError: "invalid_json",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "invalid_api_key",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.Throttled: "rate_limit_exceeded",
}


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def _wants_json(request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def _first_error(detail, path: str = "") -> tuple[str | None, str, str | None]:
    """(param, message, code) of the first error in DRF's nested detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            return _first_error(value, f"{path}.{name}".strip(".") if name else path)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                return _first_error(value, f"{path}.{index}".strip("."))
            return _first_error(value, path)
    code = getattr(detail, "code", None)
    return (path or None), str(detail), code


def _all_messages(detail, path: str = "") -> list[str]:
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            out += _all_messages(value, f"{path}.{name}".strip(".") if name else path)
        return out
    if isinstance(detail, list):
        out = []
        for index, value in enumerate(detail):
            sub = f"{path}.{index}".strip(".") if isinstance(value, dict | list) else path
            out += _all_messages(value, sub)
        return out
    return [f"{path}: {detail}" if path else str(detail)]


def api_exception_handler(exc, context):
    """DRF's exception handler, answering in the one error shape."""
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    from tenants.access import MfaRequired

    if isinstance(exc, MfaRequired):
        message = ("Platform staff must use a passkey in this session first." if exc.staff else
                   "Owners and admins must turn on two-factor authentication first (in the console: Security).")
        return Response(error_body(message, type="permission_error", code="mfa_required"), status=403)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 handler answers (in this shape) and logs it

    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    status_code = exc.status_code
    if isinstance(exc, exceptions.ValidationError):
        param, _message, code = _first_error(exc.detail)
        message = "; ".join(_all_messages(exc.detail))
        code = code or "invalid"
    else:
        param = None
        detail = exc.detail
        if isinstance(detail, dict | list):
            param, message, code = _first_error(detail)
        else:
            message = str(detail)
            code = getattr(detail, "code", None)
        code = _CODES.get(type(exc)) if code in (None, exc.default_code) and type(exc) in _CODES else code
        code = code or exc.default_code
    if status_code == status.HTTP_403_FORBIDDEN and code == "permission_denied" and "CSRF" in message:
        code = "csrf_failed"
    body = error_body(message, type=_TYPES.get(status_code, "api_error"), code=code, param=param)
    return Response(body, status=status_code, headers=headers)


def page_not_found(request, exception=None):
    if _wants_json(request):
        return JsonResponse(error_body("Not found.", type="not_found_error", code="not_found"), status=404)
    return render(request, "404.html", status=404)


def permission_denied(request, exception=None):
    if _wants_json(request):
        return JsonResponse(error_body("You do not have permission to do this.", type="permission_error",
                                       code="permission_denied"), status=403)
    return render(request, "403.html", {"reason": str(exception or "")}, status=403)


def bad_request(request, exception=None):
    if _wants_json(request):
        return JsonResponse(error_body("Bad request.", type="invalid_request_error", code="bad_request"), status=400)
    return render(request, "400.html", status=400)


def server_error(request):
    if _wants_json(request):
        return JsonResponse(error_body("The server had an error.", type="server_error", code="server_error"),
                            status=500)
    return render(request, "500.html", status=500)
