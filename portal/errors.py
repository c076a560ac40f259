"""Error pages that never show a stack trace, in HTML for people and JSON for API clients."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render


def _wants_json(request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def page_not_found(request, exception=None):
    if _wants_json(request):
        return JsonResponse({"error": {"message": "Not found.", "type": "not_found", "code": "not_found"}},
                            status=404)
    return render(request, "404.html", status=404)


def server_error(request):
    if _wants_json(request):
        return JsonResponse(
            {"error": {"message": "The server had an error.", "type": "server_error", "code": "server_error"}},
            status=500,
        )
    return render(request, "500.html", status=500)
