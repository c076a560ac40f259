"""Staff pages for the backend pool, and the tenant console's playground page (its socket is
``inference.consumers.PlaygroundConsumer``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django.conf import settings
from django.contrib import messages
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import ccaas
from inference import playground_history, selectors, services
from inference.forms import BackendForm
from inference.models import Backend
from inference.playground import PERSONAS
from tenants.permissions import Action
from tenants.views.common import staff_view, tenant_view


def _with_health(backends):
    """Attach each backend's live state: the record a data-plane worker writes after each round of probes (what
    requests are routed by), or, with no worker running, the control plane's probe. ``health.stale``: older than
    three probe intervals, so the page says so rather than showing an old "healthy" as current."""
    now = time.time()
    for backend in backends:
        health = services.backend_health(backend.name)
        if health is not None:
            checked = health.get("checked_at")
            health["checked"] = datetime.fromtimestamp(checked, tz=UTC) if checked else None
            health["age_s"] = max(0, round(now - checked)) if checked else None
            health["stale"] = checked is None or now - checked > 3 * max(settings.INFERENCE_PROBE_INTERVAL_S, 1)
            health["context"] = [(m, (health.get("max_model_len") or {}).get(m)) for m in health.get("models") or []]
        backend.health = health
    return backends


def _probe_context() -> dict:
    return {"probe_interval_s": settings.INFERENCE_PROBE_INTERVAL_S}


def _save(request, form: BackendForm) -> bool:
    """Save through the service; a refusal it makes that the form couldn't foresee (a host name that resolves
    elsewhere a moment later) becomes a form error, not a 500."""
    try:
        services.backend_save(backend=form.save(commit=False), actor=request.user, request=request,
                              new_api_key=form.cleaned_data["new_api_key"])
    except ValueError as exc:
        form.add_error("base_url", str(exc))
        return False
    return True


@require_http_methods(["GET", "POST"])
@staff_view
def backend_list(request):
    form = BackendForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _save(request, form):
        messages.success(request, f"Backend {form.instance.name} added.")
        return redirect("staff_backend_list")
    context = {"backends": _with_health(list(Backend.objects.all())), "form": form, **_probe_context()}
    return render(request, "inference/staff/backend_list.html", context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@staff_view
def backend_edit(request, name: str):
    backend = get_object_or_404(Backend, name=name)
    form = BackendForm(request.POST or None, instance=backend)
    if request.method == "POST" and form.is_valid() and _save(request, form):
        messages.success(request, f"Backend {backend.name} saved.")
        return redirect("staff_backend_list")
    context = {"backend": _with_health([backend])[0], "form": form, **_probe_context()}
    return render(request, "inference/staff/backend_edit.html", context, status=400 if form.errors else 200)


_STATE_CHANGES = {
    "enable": {"enabled": True},
    "disable": {"enabled": False},
    "drain": {"draining": True},
    "undrain": {"draining": False},
}


@require_POST
@staff_view
def backend_state(request, name: str):
    backend = get_object_or_404(Backend, name=name)
    change = _STATE_CHANGES.get(request.POST.get("action", ""))
    if change is None:
        messages.error(request, "Unknown action.")
        return redirect("staff_backend_list")
    services.backend_set_state(backend=backend, actor=request.user, request=request, **change)
    messages.success(request, f"Backend {backend.name}: {request.POST['action']}d.")
    return redirect("staff_backend_list")


@require_POST
@staff_view
def backend_delete(request, name: str):
    backend = get_object_or_404(Backend, name=name)
    services.backend_delete(backend=backend, actor=request.user, request=request)
    messages.success(request, f"Backend {name} removed.")
    return redirect("staff_backend_list")


@require_GET
@tenant_view(Action.PLAYGROUND_USE)
def playground(request, access):
    """The chat playground. The page is a shell: the conversation runs over its socket (static/js/playground.js),
    which lists the models the data plane serves right now; the options here are what the backends declare, so
    the form has something to show before the socket is up."""
    context = {
        "tenant": access.tenant,
        "models": selectors.declared_models(),
        "max_message_bytes": settings.INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES,
        "channels": [(value, label) for value, (label, _manner) in ccaas.CHANNELS.items()],
        "default_channel": ccaas.DEFAULT_CHANNEL,
        "default_language": ccaas.DEFAULT_LANGUAGE,
        "personas": [(value, label) for value, (label, _lines) in PERSONAS.items()],
        "persona_lines": {value: list(lines) for value, (_label, lines) in PERSONAS.items()},
        "history": playground_history.enabled(access.tenant),
    }
    return render(request, "inference/playground.html", context)


def _own_history(access) -> None:
    """History is a member's own: none while the tenant keeps no transcripts, and none for staff acting as the
    tenant (who may not use the playground; content is theirs to read only under break-glass)."""
    if access.membership is None or access.acting_as or not playground_history.enabled(access.tenant):
        raise Http404


@never_cache  # decrypted conversation text: not left in the browser's disk cache
@require_GET
@tenant_view(Action.PLAYGROUND_USE)
def playground_history_list(request, access):
    """The member's own playground conversations (JSON, for the page's History panel)."""
    _own_history(access)
    listed = playground_history.conversations(tenant=access.tenant, user=request.user, request=request)
    return JsonResponse({"conversations": listed})


@never_cache  # decrypted conversation text: not left in the browser's disk cache
@require_GET
@tenant_view(Action.PLAYGROUND_USE)
def playground_history_open(request, access, conversation_id: str):
    """One of the member's conversations, decrypted to continue it in the page (JSON). Another member's, another
    tenant's or an unknown id is a 404 alike."""
    _own_history(access)
    try:
        found = playground_history.conversation(tenant=access.tenant, user=request.user,
                                                conversation_id=conversation_id, request=request)
    except playground_history.Unreadable:
        return JsonResponse({"error": "This conversation can no longer be read."}, status=410)
    except playground_history.Unavailable:
        return JsonResponse({"error": "History can't be read just now. Try again in a minute."}, status=503)
    if found is None:
        raise Http404
    return JsonResponse(found)
