"""Individuals' requests in the consoles (``audit.privacy_requests``): owners and admins open, track and carry
out their end customers' requests at ``t/<slug>/privacy-requests/``; staff see every tenant's at
``staff/privacy-requests/`` (the due dates, and what was done; never a copy's content)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from allauth.account.decorators import reauthentication_required
from asgiref.sync import sync_to_async
from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from audit import privacy_requests as services
from audit.models import PrivacyRequest
from tenants.models import Tenant
from tenants.permissions import Action
from tenants.views.common import error_messages, staff_view, tenant_view

PAGE = 100


class PrivacyRequestForm(forms.Form):
    kind = forms.ChoiceField(choices=PrivacyRequest.Kind.choices, widget=forms.RadioSelect)
    customer_id = forms.CharField(label="End-customer id", max_length=64,
                                  help_text="The id your systems send as `customer_id`, `user` or "
                                            "`x-wattle-customer-id`.")
    new_customer_id = forms.CharField(label="Correct end-customer id", max_length=64, required=False,
                                      help_text="Corrections only: the id the records belong under.")
    note = forms.CharField(label="Your reference", max_length=500, required=False,
                           help_text="A ticket number or similar. Not shown to anyone outside your organisation.")


class CarryOutForm(forms.Form):
    text = forms.CharField(label="The individual's statement", max_length=services.ANNOTATION_MAX, required=False,
                           widget=forms.Textarea(attrs={"rows": 4}))


class RefuseForm(forms.Form):
    reason = forms.CharField(label="Reason for refusing", max_length=500, widget=forms.Textarea(attrs={"rows": 3}))


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # The portal is served over ASGI, where Django would read a plain iterator to its end into memory before
    # sending a byte: each chunk is read in a thread as it is sent instead.
    step = sync_to_async(next, thread_sensitive=True)
    try:
        while (chunk := await step(chunks, None)) is not None:
            yield chunk
    finally:  # a client gone mid-download: the holders' open cursors are closed now, in the thread that has them
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=True)()


def download(chunks: Iterator[bytes], privacy_request: PrivacyRequest) -> StreamingHttpResponse:
    """An access request's copy as a JSON download, written out as its records are read (a customer id can hold
    millions of records: never the whole document in memory)."""
    response = StreamingHttpResponse(_async_chunks(iter(chunks)), content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="privacy-request-{privacy_request.pk}.json"'
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@tenant_view(Action.PRIVACY_REQUESTS_MANAGE)
@reauthentication_required(allow_get=True)
def tenant_privacy_requests(request, access):
    tenant = access.tenant
    form = PrivacyRequestForm()
    status = 200
    if request.method == "POST":
        form = PrivacyRequestForm(request.POST)
        if form.is_valid():
            try:
                created = services.privacy_request_open(
                    tenant=tenant, channel=PrivacyRequest.Channel.CONSOLE, actor=request.user, request=request,
                    **form.cleaned_data)
            except ValidationError as exc:
                for field, errors in getattr(exc, "message_dict", {"__all__": exc.messages}).items():
                    for error in errors:
                        form.add_error(field if field in form.fields else None, error)
            else:
                messages.success(request, f"Request recorded: due by {created.due_at:%-d %b %Y}.")
                return redirect("tenant_privacy_request", tenant.slug, created.pk)
        status = 400
    requests_ = services.open_first(PrivacyRequest.objects.filter(tenant=tenant))[:PAGE]
    return render(request, "tenants/privacy_requests.html", {
        "tenant": tenant, "form": form, "privacy_requests": requests_, "now": timezone.now(),
    }, status=status)


@require_http_methods(["GET", "POST"])
@tenant_view(Action.PRIVACY_REQUESTS_MANAGE)
@reauthentication_required(allow_get=True)
def tenant_privacy_request(request, access, request_id):
    tenant = access.tenant
    privacy_request = get_object_or_404(PrivacyRequest, pk=request_id, tenant=tenant)
    carry_out, refuse = CarryOutForm(), RefuseForm()
    status = 200
    if request.method == "POST":
        try:
            if request.POST.get("step") == "refuse":
                refuse = RefuseForm(request.POST)
                if not refuse.is_valid():
                    raise ValidationError(refuse.errors.get("reason") or "Give a reason.")
                services.privacy_request_refuse(privacy_request=privacy_request, reason=refuse.cleaned_data["reason"],
                                                actor=request.user, request=request)
                messages.success(request, "Request refused; the reason is kept with it.")
                return redirect("tenant_privacy_request", tenant.slug, privacy_request.pk)
            carry_out = CarryOutForm(request.POST)
            carry_out.is_valid()
            result = services.privacy_request_carry_out(
                privacy_request=privacy_request, actor=request.user, request=request,
                text=carry_out.cleaned_data.get("text"), stream=True)
            if not isinstance(result, PrivacyRequest):
                return download(result, privacy_request)
            messages.success(request, "Request carried out.")
            return redirect("tenant_privacy_request", tenant.slug, privacy_request.pk)
        except ValidationError as exc:
            for message in error_messages(exc):
                messages.error(request, message)
            status = 400
    return render(request, "tenants/privacy_request.html", {
        "tenant": tenant, "privacy_request": privacy_request, "carry_out": carry_out, "refuse": refuse,
        "now": timezone.now(),
    }, status=status)


class StaffPrivacyRequestFilter(forms.Form):
    tenant = forms.SlugField(required=False, max_length=80)
    status = forms.ChoiceField(required=False, choices=[("", "Any"), *PrivacyRequest.Status.choices])
    overdue = forms.BooleanField(required=False, label="Overdue only")


@require_GET
@staff_view
def staff_privacy_requests(request):
    form = StaffPrivacyRequestFilter(request.GET)
    qs = services.open_first(PrivacyRequest.objects.select_related("tenant"))
    status = 200
    if form.is_valid():
        data = form.cleaned_data
        if data["tenant"]:
            qs = qs.filter(tenant__slug=data["tenant"])
        if data["status"]:
            qs = qs.filter(status=data["status"])
        if data["overdue"]:
            qs = qs.filter(status=PrivacyRequest.Status.RECEIVED, due_at__lt=timezone.now())
    else:
        status, qs = 400, qs.none()
    return render(request, "tenants/staff/privacy_requests.html", {
        "form": form, "privacy_requests": qs[:PAGE], "now": timezone.now(),
        "tenants": Tenant.objects.filter(pk__in=qs.values("tenant")).count() if status == 200 else 0,
    }, status=status)
