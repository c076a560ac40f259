"""Kept transcripts in the console (R-RET, R-SEC-3): owners and admins list theirs and read one (decrypted on view,
each view audited); the retention setting and an owner's "destroy now"; platform staff read content only under
break-glass access (reason, fresh re-authentication, expiry), and a staff read without it is refused and audited."""

from __future__ import annotations

import orjson
from allauth.account.decorators import reauthentication_required
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from audit import transcripts as retention
from audit.envelope import DecryptionError, KeyServiceUnavailable
from audit.models import Transcript
from tenants import selectors, services
from tenants.permissions import Action
from tenants.retention_forms import BreakGlassForm, DestroyTranscriptsForm, RetentionForm
from tenants.views.common import form_errors, staff_view, tenant_view

_PAGE = 50


def _require_reader(request, access) -> None:
    """Owners and admins. Staff acting as the tenant are refused, and the refusal audited: staff read content
    only through break-glass access in the staff console."""
    if access.acting_as:
        retention.break_glass_refused(user=request.user, tenant=access.tenant, request=request, what="act-as")
        raise PermissionDenied
    access.require(Action.TRANSCRIPTS_VIEW)


def _page(request, tenant):
    rows = Transcript.objects.filter(tenant=tenant).only(
        "id", "request_id", "turn", "kind", "conversation_id", "customer_id", "model", "endpoint", "status",
        "created_at", "expires_at").order_by("-created_at", "-id")
    return Paginator(rows, _PAGE).get_page(request.GET.get("page"))


def _content(request, transcript, grant=None) -> dict | None:
    """The decrypted content, shaped for display: the prompt's messages (role, text) or its text, and the reply.
    None when it doesn't decrypt (its key is gone, or it was altered): shown as unreadable, never a 500."""
    try:
        content = retention.transcript_content(transcript=transcript, actor=request.user, request=request,
                                               grant=grant)
    except (DecryptionError, KeyServiceUnavailable):
        return None
    prompt = content.get("prompt")
    messages_, text = [], ""
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        for message in prompt:
            body = message.get("content")
            if not isinstance(body, str):
                body = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() if body is not None else ""
            messages_.append({"role": str(message.get("role", "")), "text": body})
    else:
        text = prompt if isinstance(prompt, str) else orjson.dumps(prompt, option=orjson.OPT_INDENT_2).decode()
    return {"messages": messages_, "prompt_text": text, "reply": content.get("reply") or ""}


@never_cache  # decrypted content: never kept in a browser's or a proxy's cache
@require_GET
@tenant_view(Action.TENANT_VIEW)
def transcripts(request, access):
    _require_reader(request, access)
    tenant = access.tenant
    return render(request, "tenants/transcripts.html", {
        "tenant": tenant, "page": _page(request, tenant), "destroy_form": DestroyTranscriptsForm(),
    })


@never_cache  # decrypted content: never kept in a browser's or a proxy's cache
@require_GET
@tenant_view(Action.TENANT_VIEW)
def transcript_detail(request, access, transcript_id):
    _require_reader(request, access)
    transcript = Transcript.objects.select_related("data_key", "tenant").filter(
        pk=transcript_id, tenant=access.tenant).first()
    if transcript is None:
        raise Http404
    return render(request, "tenants/transcript_detail.html", {
        "tenant": access.tenant, "transcript": transcript, "content": _content(request, transcript),
    })


@require_POST
@tenant_view(Action.TENANT_UPDATE)
@reauthentication_required
def retention_set(request, access):
    tenant = access.tenant
    form = RetentionForm(request.POST)
    if form.is_valid():
        try:
            services.tenant_retention_set(tenant=tenant, days=form.cleaned_data["retention_days"],
                                          actor=request.user, request=request)
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            days = form.cleaned_data["retention_days"]
            messages.success(request, f"Transcripts are kept for {days} days." if days else
                             "Transcripts are no longer kept. Those already kept expire on schedule.")
            return redirect("tenant_settings", tenant.slug)
    return render(request, "tenants/retention.html", {"tenant": tenant, "retention_form": form}, status=400)


@require_POST
@tenant_view(Action.TRANSCRIPTS_DESTROY)
@reauthentication_required
def transcripts_destroy(request, access):
    tenant = access.tenant
    form = DestroyTranscriptsForm(request.POST)
    if not form.is_valid():
        return render(request, "tenants/transcripts.html", {
            "tenant": tenant, "page": _page(request, tenant), "destroy_form": form}, status=400)
    count = retention.transcripts_destroy_all(tenant=tenant, actor=request.user, request=request)
    messages.success(request, f"{count} kept transcript{'s' if count != 1 else ''} destroyed.")
    return redirect("tenant_transcripts", tenant.slug)


# --- staff: break-glass (R-SEC-3) ----------------------------------------------------------------------
@never_cache  # decrypted content: never kept in a browser's or a proxy's cache
@require_GET
@staff_view
def staff_transcripts(request, slug: str):
    tenant = selectors.tenant_by_slug(slug=slug)
    grant = retention.break_glass_active(user=request.user, tenant=tenant)
    return render(request, "tenants/staff/transcripts.html", {
        "tenant": tenant, "grant": grant, "page": _page(request, tenant) if grant else None,
        "form": BreakGlassForm(),
    })


@require_POST
@staff_view
@reauthentication_required
def staff_break_glass(request, slug: str):
    tenant = selectors.tenant_by_slug(slug=slug)
    form = BreakGlassForm(request.POST)
    if not form.is_valid():
        return render(request, "tenants/staff/transcripts.html", {
            "tenant": tenant, "grant": None, "page": None, "form": form}, status=400)
    grant = retention.break_glass_grant(user=request.user, tenant=tenant, reason=form.cleaned_data["reason"],
                                        request=request)
    messages.warning(request, f"Break-glass access to {tenant.name}'s transcripts until "
                              f"{grant.expires_at:%H:%M} UTC. Every transcript you open is recorded.")
    return redirect("staff_transcripts", tenant.slug)


@never_cache  # decrypted content: never kept in a browser's or a proxy's cache
@require_GET
@staff_view
def staff_transcript_detail(request, slug: str, transcript_id):
    tenant = selectors.tenant_by_slug(slug=slug)
    grant = retention.break_glass_active(user=request.user, tenant=tenant)
    if grant is None:
        retention.break_glass_refused(user=request.user, tenant=tenant, request=request, what="staff")
        return render(request, "tenants/staff/transcripts.html", {
            "tenant": tenant, "grant": None, "page": None, "form": BreakGlassForm(), "refused": True}, status=403)
    transcript = Transcript.objects.select_related("data_key", "tenant").filter(
        pk=transcript_id, tenant=tenant).first()
    if transcript is None:
        raise Http404
    return render(request, "tenants/staff/transcript_detail.html", {
        "tenant": tenant, "transcript": transcript, "grant": grant,
        "content": _content(request, transcript, grant=grant),
    })
