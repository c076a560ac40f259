"""The tenant console: overview and onboarding, team, invitations, API keys and settings. The usage and limits
pages are billing's (``billing.tenant_console``), and billing's sections on these pages (a key's quota, the
recent requests) come from its template tags: tenants imports nothing from billing."""

from __future__ import annotations

from allauth.account.adapter import get_adapter
from allauth.account.decorators import reauthentication_required
from allauth.mfa.utils import is_mfa_enabled
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tenants import forms, hooks, selectors, services
from tenants.adapters import SESSION_INVITATION
from tenants.models import ApiKey, Membership
from tenants.permissions import Action, assignable_roles, grantable_scopes
from tenants.redirects import safe_next_url
from tenants.views.common import back, flash_errors, form_errors, tenant_view

EXAMPLE_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
ORGANISATION = "the organisation's"


def _api_base(request) -> str:
    return request.build_absolute_uri("/v1").rstrip("/")


# --- overview and onboarding -----------------------------------------------------------------------
@require_GET
@tenant_view(Action.TENANT_VIEW)
def tenant_home(request, access):
    tenant = access.tenant
    has_keys = ApiKey.objects.filter(tenant=tenant).exists()
    context = {
        "tenant": tenant,
        "has_keys": has_keys,
        "api_base": _api_base(request),
    }
    return render(request, "tenants/home.html", context)


@require_GET
@tenant_view(Action.TENANT_VIEW)
def onboarding(request, access):
    tenant = access.tenant
    first_key = ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).order_by("created_at").first()
    context = {
        "tenant": tenant,
        "first_key": first_key,
        "api_base": _api_base(request),
        "example_model": EXAMPLE_MODEL,
    }
    return render(request, "tenants/onboarding.html", context)


# --- team ------------------------------------------------------------------------------------------
def _members_context(request, access, *, invite_form=None) -> dict:
    roles = assignable_roles(access.role)
    return {
        "tenant": access.tenant,
        "members": list(selectors.members_for_tenant(tenant=access.tenant)),
        "invitations": list(selectors.invitations_for_tenant(tenant=access.tenant, status="pending"))
        if access.can(Action.INVITATIONS_VIEW) else [],
        "invite_form": invite_form or forms.InviteForm(roles=roles),
        "assignable_roles": roles,
        "role_choices": [(r, label) for r, label in Membership._meta.get_field("role").choices if r in roles],
    }


@require_GET
@tenant_view(Action.MEMBERS_VIEW)
def members(request, access):
    return render(request, "tenants/members.html", _members_context(request, access))


@require_POST
@tenant_view(Action.INVITATIONS_MANAGE)
def invitation_create(request, access):
    form = forms.InviteForm(request.POST, roles=assignable_roles(access.role))
    if form.is_valid():
        try:
            issued = services.member_invite(
                tenant=access.tenant, email=form.cleaned_data["email"], role=form.cleaned_data["role"],
                invited_by=request.user, inviter_role=access.role, request=request,
            )
        except ValidationError as exc:
            for field, errors in getattr(exc, "message_dict", {"email": exc.messages}).items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
        else:
            if issued.resent:
                messages.success(request, f"Invitation re-sent to {issued.invitation.email}. The link in the earlier "
                                          "email no longer works.")
            else:
                messages.success(request, f"Invitation sent to {issued.invitation.email}.")
            return redirect("tenant_members", access.tenant.slug)
    return render(request, "tenants/members.html", _members_context(request, access, invite_form=form), status=400)


@require_POST
@tenant_view(Action.INVITATIONS_MANAGE)
def invitation_revoke(request, access, invitation_id):
    invitation = selectors.invitation_get(tenant=access.tenant, invitation_id=invitation_id)
    try:
        services.invitation_revoke(invitation=invitation, actor=request.user, request=request)
        messages.success(request, f"Invitation to {invitation.email} revoked.")
    except ValidationError as exc:
        flash_errors(request, exc)
    return redirect("tenant_members", access.tenant.slug)


@require_POST
@tenant_view(Action.MEMBERS_CHANGE_ROLE)
def member_role(request, access, member_id):
    membership = selectors.member_get(tenant=access.tenant, member_id=member_id)
    form = forms.RoleForm(request.POST, roles=assignable_roles(access.role))
    status = 200
    if not form.is_valid():
        messages.error(request, "Choose one of the roles offered.")
        status = 400
    else:
        try:
            membership = services.member_change_role(
                membership=membership, role=form.cleaned_data["role"], actor=request.user,
                actor_role=access.role, request=request,
            )
            messages.success(request, f"{membership.user.email} is now {membership.get_role_display().lower()}.")
        except ValidationError as exc:
            flash_errors(request, exc)
            status = 400
    if request.htmx:
        context = _members_context(request, access)
        context["member"] = next((m for m in context["members"] if m.pk == membership.pk), membership)
        return render(request, "tenants/partials/member_row.html", context, status=status)
    return redirect("tenant_members", access.tenant.slug)


@require_http_methods(["GET", "POST"])
@tenant_view(Action.MEMBERS_REMOVE)
@reauthentication_required(allow_get=True)
def member_remove(request, access, member_id):
    membership = selectors.member_get(tenant=access.tenant, member_id=member_id)
    if request.method == "POST":
        try:
            services.member_remove(membership=membership, actor=request.user, actor_role=access.role,
                                   request=request)
        except ValidationError as exc:
            flash_errors(request, exc)
            return redirect("tenant_members", access.tenant.slug)
        messages.success(request, f"{membership.user.email} was removed from {access.tenant.name}.")
        if membership.user_id == request.user.id:
            return redirect("dashboard")
        return redirect("tenant_members", access.tenant.slug)
    try:
        services.member_remove_check(membership=membership, actor_role=access.role)
    except ValidationError as exc:
        flash_errors(request, exc)
        return redirect("tenant_members", access.tenant.slug)
    return render(request, "tenants/member_remove.html", {"tenant": access.tenant, "member": membership})


@require_http_methods(["GET", "POST"])
@tenant_view(Action.OWNERSHIP_TRANSFER)
@reauthentication_required(allow_get=True)
def ownership_transfer(request, access, member_id):
    target = selectors.member_get(tenant=access.tenant, member_id=member_id)
    form = forms.TransferOwnershipForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            services.ownership_transfer(tenant=access.tenant, from_membership=access.membership,
                                        to_membership=target, actor=request.user, request=request)
        except (ValidationError, PermissionDenied) as exc:
            messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
            return redirect("tenant_members", access.tenant.slug)
        messages.success(request, f"{target.user.email} now owns {access.tenant.name}.")
        return redirect("tenant_members", access.tenant.slug)
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/ownership_transfer.html",
                  {"tenant": access.tenant, "member": target, "form": form}, status=status)


# --- invitations (the invited person's side) -------------------------------------------------------
@require_http_methods(["GET", "POST"])
@never_cache
def invitation_accept(request, token: str):
    invitation = services.invitation_for_token(token)
    if invitation is None:
        return render(request, "tenants/invitation.html", {"problem": "invalid"}, status=404)
    if not invitation.is_usable:
        return render(request, "tenants/invitation.html", {"problem": invitation.status, "invitation": invitation},
                      status=410)
    if not request.user.is_authenticated:
        # Opening the emailed link proves control of the address: sign-up with it needs no second email.
        request.session[SESSION_INVITATION] = token
        get_adapter(request).stash_verified_email(request, invitation.email)
        return render(request, "tenants/invitation.html", {"invitation": invitation, "token": token})
    if request.method == "POST":
        try:
            membership = services.invitation_accept(token=token, user=request.user, request=request)
        except ValidationError as exc:
            return render(request, "tenants/invitation.html",
                          {"invitation": invitation, "token": token, "errors": exc.messages}, status=400)
        request.session.pop(SESSION_INVITATION, None)
        messages.success(request, f"Welcome to {membership.tenant.name}.")
        return redirect("tenant_home", membership.tenant.slug)
    return render(request, "tenants/invitation.html", {"invitation": invitation, "token": token})


# --- API keys --------------------------------------------------------------------------------------
@require_GET
@tenant_view(Action.KEYS_VIEW)
def keys(request, access):
    status = request.GET.get("status") or ""
    if status not in ("", "active", "revoked", "expired"):
        status = ""
    paginator = Paginator(selectors.api_keys_for_tenant(tenant=access.tenant, status=status or None), 50)
    page = paginator.get_page(request.GET.get("page"))
    api_keys = selectors.with_last_used(tenant=access.tenant, api_keys=list(page.object_list))
    return render(request, "tenants/keys.html",
                  {"tenant": access.tenant, "api_keys": api_keys, "page": page, "status": status})


def _render_secret(request, access, issued, *, rotated: bool = False):
    response = render(request, "tenants/key_secret.html", {
        "tenant": access.tenant, "api_key": issued.api_key, "secret": issued.plaintext, "rotated": rotated,
        "api_base": _api_base(request), "example_model": EXAMPLE_MODEL,
    }, status=201 if not rotated else 200)
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@tenant_view(Action.KEYS_CREATE)
@reauthentication_required(allow_get=True)
def key_create(request, access):
    form = forms.ApiKeyForm(request.POST if request.method == "POST" else None,
                            grantable=grantable_scopes(access.role))
    form.explain_empty(hooks.tenant_limits(access.tenant), whose=ORGANISATION)
    if request.method == "POST" and form.is_valid():
        try:
            issued = services.api_key_create(
                tenant=access.tenant, name=form.cleaned_data["name"], created_by=request.user,
                scopes=form.cleaned_data["scopes"], allowed_models=form.cleaned_data["allowed_models"],
                expires_at=form.expires_at(), limits=form.limits(), actor_role=access.role, request=request,
            )
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            return _render_secret(request, access, issued)
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/key_form.html", {"tenant": access.tenant, "form": form}, status=status)


def _key_detail(request, access, api_key, *, limits_form=None, status: int = 200):
    """The key's page; its quota section is billing's (``{% key_quota %}``)."""
    selectors.with_last_used(tenant=access.tenant, api_keys=[api_key])
    if limits_form is None and Action.KEYS_LIMITS in access.key_actions(api_key):
        limits_form = forms.KeyLimitsForm(initial={n: getattr(api_key, n) for n in ApiKey.LIMIT_FIELDS})
    if limits_form is not None:
        limits_form.explain_empty(hooks.tenant_limits(access.tenant), whose=ORGANISATION)
    return render(request, "tenants/key_detail.html", {
        "tenant": access.tenant, "api_key": api_key, "limits_form": limits_form,
    }, status=status)


@require_GET
@tenant_view(Action.KEYS_VIEW)
def key_detail(request, access, key_id: str):
    return _key_detail(request, access, selectors.api_key_get(tenant=access.tenant, key_id=key_id))


@require_POST
@tenant_view(Action.KEYS_LIMITS)
def key_limits(request, access, key_id: str):
    api_key = selectors.api_key_get(tenant=access.tenant, key_id=key_id)
    form = forms.KeyLimitsForm(request.POST)
    if form.is_valid():
        try:
            services.api_key_set_limits(api_key=api_key, limits=form.limits(), actor=request.user,
                                        actor_role=access.role, request=request)
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, f"Limits of {api_key.name} saved. They apply within a second.")
            return redirect("tenant_key_detail", access.tenant.slug, api_key.key_id)
    return _key_detail(request, access, api_key, limits_form=form, status=400)


@require_POST
@tenant_view(Action.KEYS_REVOKE)
def key_revoke(request, access, key_id: str):
    api_key = selectors.api_key_get(tenant=access.tenant, key_id=key_id)
    api_key = services.api_key_revoke(api_key=api_key, actor=request.user, actor_role=access.role, request=request)
    messages.success(request, f"Key {api_key.prefix} ({api_key.name}) is revoked. It stops working within a second.")
    if request.htmx:
        selectors.with_last_used(tenant=access.tenant, api_keys=[api_key])
        return render(request, "tenants/partials/key_row.html", {"tenant": access.tenant, "key": api_key})
    return back(request, reverse("tenant_keys", args=[access.tenant.slug]))


@require_http_methods(["GET", "POST"])
@tenant_view(Action.KEYS_ROTATE)
@reauthentication_required(allow_get=True)
def key_rotate(request, access, key_id: str):
    api_key = selectors.api_key_get(tenant=access.tenant, key_id=key_id)
    if Action.KEYS_ROTATE not in access.key_actions(api_key):
        raise PermissionDenied(f"Your role ({access.role}) can't rotate a key with these scopes.")
    form = forms.RotateKeyForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = services.api_key_rotate(api_key=api_key, grace=form.grace_period(), actor=request.user,
                                             actor_role=access.role, request=request)
        except ValidationError as exc:
            flash_errors(request, exc)
            return redirect("tenant_key_detail", access.tenant.slug, api_key.key_id)
        return _render_secret(request, access, issued, rotated=True)
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/key_rotate.html", {"tenant": access.tenant, "api_key": api_key, "form": form},
                  status=status)


# --- settings --------------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@tenant_view(Action.TENANT_VIEW)
def tenant_settings(request, access):
    tenant = access.tenant
    initial = {"name": tenant.name, "billing_email": tenant.billing_email, "abn": tenant.abn, "state": tenant.state}
    status = 200
    form = forms.TenantSettingsForm(initial=initial)
    redaction_form = forms.RedactionForm(initial={"redaction": tenant.redaction})
    conversation_form = forms.ConversationSettingsForm(
        initial={name: getattr(tenant, name) for name in services.CONVERSATION_SETTINGS})
    if request.method == "POST":
        access.require(Action.TENANT_UPDATE)
        if request.POST.get("section") == "conversations":
            conversation_form = forms.ConversationSettingsForm(request.POST)
            if conversation_form.is_valid():
                services.tenant_conversation_settings_set(tenant=tenant, actor=request.user, request=request,
                                                          **conversation_form.cleaned_data)
                messages.success(request, "Conversation settings saved.")
                return redirect("tenant_settings", tenant.slug)
        elif request.POST.get("section") == "redaction":
            redaction_form = forms.RedactionForm(request.POST)
            if redaction_form.is_valid():
                services.tenant_redaction_set(tenant=tenant, mode=redaction_form.cleaned_data["redaction"],
                                              actor=request.user, request=request)
                messages.success(request, "Redaction setting saved.")
                return redirect("tenant_settings", tenant.slug)
        else:
            form = forms.TenantSettingsForm(request.POST, initial=initial)
            if form.is_valid():
                services.tenant_update(tenant=tenant, actor=request.user, request=request, **form.cleaned_data)
                messages.success(request, "Organisation details saved.")
                return redirect("tenant_settings", tenant.slug)
        status = 400
    return render(request, "tenants/settings.html",
                  {"tenant": tenant, "form": form, "redaction_form": redaction_form,
                   "conversation_form": conversation_form}, status=status)


# --- account-level pages ---------------------------------------------------------------------------
@require_GET
@login_required
def mfa_required(request):
    next_url = (safe_next_url(request, request.GET.get("next"))
                or safe_next_url(request, request.session.get("wattle_mfa_next")))
    return render(request, "tenants/mfa_required.html", {
        "next_url": next_url,
        "mfa_enabled": is_mfa_enabled(request.user),
        "staff": request.user.is_staff,
    })
