"""State changes for tenants, members, invitations and API keys.

Each service is keyword-only, runs in one transaction, writes its audit entry in that transaction, and
defers side effects (publishing key records to Redis for the data plane, sending email) until after commit.
Permission to *attempt* an action is decided by ``tenants.permissions`` in the caller; the rules that depend
on the objects themselves (the last owner, who may touch an owner, which keys a role may touch) are enforced
here, so the console and the management API cannot differ.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from audit import transcripts as retention
from audit.envelope import KeyServiceUnavailable
from audit.services import record
from core import ccaas, quotas
from core.proxies import request_client_ip
from tenants import emails, hooks, keys, signals, snapshot
from tenants.models import (
    MAX_RETENTION_DAYS,
    ApiKey,
    Invitation,
    Membership,
    PolicyAcceptance,
    Role,
    SupportSession,
    Tenant,
)
from tenants.permissions import Action, can, grantable_scopes, may_manage_key

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest


def _audit(*, action: str, actor: AbstractBaseUser | None = None, tenant: Tenant | None = None, target=None,
           request: HttpRequest | None = None, data: dict[str, Any] | None = None) -> None:
    """``audit.services.record`` plus how the change was made: by an API key, or by staff acting as a tenant."""
    data = dict(data or {})
    if request is not None:
        key_id = getattr(request, "wattle_api_key_id", None)
        if key_id:
            data["via_api_key"] = key_id
        if getattr(request, "wattle_acting_as", False):
            data["acting_as_staff"] = True
    record(action=action, actor=actor, tenant=tenant, target=target, request=request, data=data)


# --- tenants ---------------------------------------------------------------------------------------
def _unique_slug(name: str) -> str:
    base = slugify(name)[:60] or "tenant"
    slug, n = base, 1
    while Tenant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def tenant_create(*, name: str, owner=None, billing_email: str = "", abn: str = "", state: str = "",
                  request: HttpRequest | None = None) -> Tenant:
    tenant = Tenant.objects.create(
        name=name, slug=_unique_slug(name), billing_email=billing_email, abn=abn, state=state
    )
    if owner is not None:
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    _audit(action="tenant.create", actor=owner, tenant=tenant, target=tenant, request=request,
           data={"name": name})
    # Its record (on the default plan) is published before any key of it can be used.
    transaction.on_commit(lambda: signals.tenant_changed.send(sender=Tenant, tenant=tenant), robust=True)
    return tenant


@transaction.atomic
def account_signup(*, user, organisation: str, billing_email: str, abn: str = "", state: str = "",
                   terms_version: str, privacy_version: str, request: HttpRequest | None = None) -> Tenant:
    """A new person signed up and owns a new organisation. Their acceptance of the terms and privacy policy
    (with the collection notice shown beside them) is recorded with versions and time."""
    tenant = tenant_create(name=organisation, owner=user, billing_email=billing_email, abn=abn, state=state,
                           request=request)
    policy_acceptance_record(user=user, tenant=tenant, terms_version=terms_version,
                             privacy_version=privacy_version, request=request)
    _audit(action="account.signup", actor=user, tenant=tenant, target=user, request=request,
           data={"tenant": tenant.slug})
    return tenant


@transaction.atomic
def account_signup_invited(*, user, invitation: Invitation, terms_version: str, privacy_version: str,
                           request: HttpRequest | None = None) -> None:
    """A person signed up from an invitation: no organisation of their own; they join by accepting it."""
    policy_acceptance_record(user=user, tenant=None, terms_version=terms_version, privacy_version=privacy_version,
                             request=request)
    _audit(action="account.signup", actor=user, tenant=invitation.tenant, target=user, request=request,
           data={"invitation": str(invitation.pk)})


@transaction.atomic
def policy_acceptance_record(*, user, tenant: Tenant | None, terms_version: str, privacy_version: str,
                             request: HttpRequest | None = None) -> PolicyAcceptance:
    acceptance = PolicyAcceptance.objects.create(
        user=user, tenant=tenant, terms_version=terms_version, privacy_version=privacy_version,
        ip=request_client_ip(request),
    )
    _audit(action="policy.accept", actor=user, tenant=tenant, target=acceptance, request=request,
           data={"terms_version": terms_version, "privacy_version": privacy_version})
    return acceptance


@transaction.atomic
def tenant_update(*, tenant: Tenant, actor: AbstractBaseUser | None = None, request: HttpRequest | None = None,
                  **changes: str) -> Tenant:
    allowed = {"name", "billing_email", "abn", "state"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot change {sorted(unknown)}")
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    changed = {k: v for k, v in changes.items() if getattr(tenant, k) != v}
    if changed:
        for name, value in changed.items():
            setattr(tenant, name, value)
        tenant.save(update_fields=list(changed))
        _audit(action="tenant.update", actor=actor, tenant=tenant, target=tenant, request=request,
               data={"fields": sorted(changed)})
    return tenant


@transaction.atomic
def tenant_redaction_set(*, tenant: Tenant, mode: str, actor: AbstractBaseUser | None = None,
                         request: HttpRequest | None = None) -> Tenant:
    """Set the tenant's personal-information redaction mode (off, redact, restore). Audited with the old and new
    mode; the tenant's record is republished after commit, so the data plane applies it within a second."""
    if mode not in Tenant.Redaction.values:
        raise ValueError(f"unknown redaction mode {mode!r}")
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    previous = tenant.redaction
    if previous == mode:
        return tenant
    tenant.redaction = mode
    tenant.save(update_fields=["redaction"])
    _audit(action="tenant.redaction.update", actor=actor, tenant=tenant, target=tenant, request=request,
           data={"from": previous, "to": mode})
    transaction.on_commit(lambda: signals.tenant_changed.send(sender=Tenant, tenant=tenant),
                          robust=True)  # a failure: the reconciliation heals it
    return tenant


CONVERSATION_SETTINGS = ("escalation_threshold", "escalation_turns", "escalation_phrases", "sentiment_scorer",
                         "sentiment_model", "analytics_sample_percent")


@transaction.atomic
def tenant_conversation_settings_set(*, tenant: Tenant, actor: AbstractBaseUser | None = None,
                                     request: HttpRequest | None = None, **values: Any) -> Tenant:
    """Set the conversation API's escalation rule, sentiment scorer and analytics sample (``CONVERSATION_SETTINGS``;
    a field not given is left as it is). Validated by the model's own validators. Audited with what changed (the
    phrases by count: they are the tenant's words, not needed to tell what changed); the tenant's record is
    republished after commit, so the data plane decides by the new rule within a second."""
    unknown = set(values) - set(CONVERSATION_SETTINGS)
    if unknown:
        raise ValueError(f"not a conversation setting: {', '.join(sorted(unknown))}")
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    changed: dict[str, Any] = {}
    for name, value in values.items():
        previous = getattr(tenant, name)
        if previous != value:
            changed[name] = ({"from": len(tenant.escalation_phrase_list), "to": None} if name == "escalation_phrases"
                             else {"from": previous, "to": value})
            setattr(tenant, name, value)
    if not changed:
        return tenant
    tenant.full_clean(validate_unique=False, validate_constraints=False)
    if "escalation_phrases" in changed:
        _check_escalation_phrases(tenant.escalation_phrase_list)
        changed["escalation_phrases"]["to"] = len(tenant.escalation_phrase_list)
    tenant.save(update_fields=list(changed))
    _audit(action="tenant.conversations.update", actor=actor, tenant=tenant, target=tenant, request=request,
           data={"changed": changed})
    transaction.on_commit(lambda: signals.tenant_changed.send(sender=Tenant, tenant=tenant),
                          robust=True)  # a failure: the reconciliation heals it
    return tenant


def _check_escalation_phrases(phrases: tuple[str, ...]) -> None:
    """The bounds the settings form shows, enforced here for every caller: the data plane compiles the phrases
    into one pattern it tries on every customer turn, so their number and length bound that work."""
    if len(phrases) > ccaas.MAX_ESCALATION_PHRASES:
        raise ValidationError({"escalation_phrases": f"Enter at most {ccaas.MAX_ESCALATION_PHRASES} phrases."})
    if any(len(p) > ccaas.MAX_ESCALATION_PHRASE_CHARS for p in phrases):
        raise ValidationError({"escalation_phrases":
                               f"Keep each phrase to {ccaas.MAX_ESCALATION_PHRASE_CHARS} characters."})
    if any(not p.isprintable() for p in phrases):
        raise ValidationError({"escalation_phrases": "Phrases are plain text."})


@transaction.atomic
def tenant_retention_set(*, tenant: Tenant, days: int, actor: AbstractBaseUser | None = None,
                         request: HttpRequest | None = None) -> Tenant:
    """Set how many days the tenant's transcripts are kept (0: off). Turning it on creates the tenant's data key
    (KMS, or the local key-wrapping key): a KMS failure refuses the change rather than capture content that
    couldn't be stored. Shortening the period brings what is already kept forward to the new period; turning it
    off stops capture and leaves what is kept to expire on its schedule (``retention.destroyed_now`` destroys it at
    once). Audited with the old and new period; the tenant's record is republished after commit, so the data plane
    starts or stops capturing within a second."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise ValidationError({"retention_days": f"Enter a number of days from 0 to {MAX_RETENTION_DAYS}."})
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    previous = tenant.retention_days
    if previous == days:
        return tenant
    if days > 0:
        try:
            retention.data_key_ensure(tenant=tenant)
        except KeyServiceUnavailable:
            raise ValidationError({"retention_days": "The encryption key service can't be reached, so retention "
                                                     "wasn't turned on. Try again in a few minutes."}) from None
    tenant.retention_days = days
    tenant.save(update_fields=["retention_days"])
    shortened = retention.retention_shorten(tenant=tenant, days=days) if 0 < days < previous else 0
    _audit(action="tenant.retention.update", actor=actor, tenant=tenant, target=tenant, request=request,
           data={"from": previous, "to": days, "brought_forward": shortened})
    transaction.on_commit(lambda: signals.tenant_changed.send(sender=Tenant, tenant=tenant),
                          robust=True)  # a failure: the reconciliation heals it
    return tenant


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str, reason: str = "", actor: AbstractBaseUser | None = None,
                      request: HttpRequest | None = None) -> Tenant:
    """Suspend, reactivate or close a tenant. The tenant's record is republished after commit (by billing, on
    ``tenant_changed``), so the data plane refuses (or serves) its requests within a second."""
    if status not in Tenant.Status.values:
        raise ValueError(f"unknown status {status!r}")
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    previous = tenant.status
    tenant.status = status
    tenant.status_reason = reason
    tenant.save(update_fields=["status", "status_reason"])
    _audit(action=f"tenant.status.{status}", actor=actor, tenant=tenant, target=tenant, request=request,
           data={"from": previous, "to": status, "reason": reason})
    if status == Tenant.Status.CLOSED and previous != status:
        # Off-boarding (R-RET-2): the content goes now, the data keys after the shredding window.
        retention.transcripts_offboard(tenant=tenant, actor=actor, request=request)
    elif previous == Tenant.Status.CLOSED and status != previous and tenant.retention_days > 0:
        retention.data_key_restore(tenant=tenant)  # reopened: a fresh key (the old ones are being shredded)
    transaction.on_commit(lambda: signals.tenant_changed.send(sender=Tenant, tenant=tenant),
                          robust=True)  # a failure: the reconciliation heals it
    return tenant


# --- members and invitations -----------------------------------------------------------------------
def _lock_owners(tenant: Tenant) -> list:
    """Lock the tenant's owner rows, so two concurrent demotions cannot both see "another owner remains"."""
    return list(Membership.objects.select_for_update().filter(tenant=tenant, role=Role.OWNER)
                .values_list("pk", flat=True))


def _owner_count(tenant: Tenant) -> int:
    return len(_lock_owners(tenant))


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str  # emailed, never stored
    accept_url: str
    resent: bool = False  # a pending invitation to the address was replaced (its link no longer works)


def _absolute(path: str, request) -> str:
    if request is not None:
        return request.build_absolute_uri(path)
    return settings.WATTLE_BASE_URL.rstrip("/") + path


@transaction.atomic
def member_invite(*, tenant: Tenant, email: str, role: str, invited_by=None, inviter_role: str | None = None,
                  request: HttpRequest | None = None) -> IssuedInvitation:
    """Invite ``email`` to ``tenant`` as ``role``. A pending invitation to the same address is replaced."""
    from django.urls import reverse

    email = email.strip().lower()
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if role == Role.OWNER and not can(inviter_role, Action.MEMBERS_MANAGE_OWNERS):
        raise PermissionDenied("Only an owner can invite another owner.")
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists() or \
            Membership.objects.filter(tenant=tenant, user__emailaddress__email__iexact=email).exists():
        raise ValidationError({"email": "This person is already a member of the organisation."})
    now = timezone.now()
    resent = False
    for stale in Invitation.objects.select_for_update().filter(
        tenant=tenant, email=email, accepted_at__isnull=True, revoked_at__isnull=True
    ):
        stale.revoked_at = now
        stale.save(update_fields=["revoked_at"])
        resent = resent or stale.expires_at > now  # an expired one was never usable: this is a fresh invitation
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant, email=email, role=role, token_hash=_token_digest(token), invited_by=invited_by,
        expires_at=now + timedelta(days=settings.TENANTS_INVITATION_DAYS),
    )
    _audit(action="invitation.create", actor=invited_by, tenant=tenant, target=invitation, request=request,
           data={"email": email, "role": role, "expires_at": invitation.expires_at.isoformat()})
    accept_url = _absolute(reverse("invitation_accept", args=[token]), request)
    invitation_id = invitation.pk
    transaction.on_commit(lambda: emails.send_invitation(invitation_id=invitation_id, accept_url=accept_url))
    return IssuedInvitation(invitation=invitation, token=token, accept_url=accept_url, resent=resent)


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: AbstractBaseUser | None = None,
                      request: HttpRequest | None = None) -> Invitation:
    invitation = Invitation.objects.select_for_update().select_related("tenant").get(pk=invitation.pk)
    if invitation.status != "pending":
        raise ValidationError(f"This invitation is already {invitation.status}.")
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    _audit(action="invitation.revoke", actor=actor, tenant=invitation.tenant, target=invitation, request=request,
           data={"email": invitation.email})
    return invitation


def invitation_for_token(token: str) -> Invitation | None:
    if not token or len(token) > 200:
        return None
    return Invitation.objects.select_related("tenant").filter(token_hash=_token_digest(token)).first()


@transaction.atomic
def invitation_accept(*, token: str, user, request: HttpRequest | None = None) -> Membership:
    """The invited person joins. The token works once, before it expires, for a user who has verified the
    invited email address."""
    found = invitation_for_token(token)
    if found is None:
        raise ValidationError("This invitation link is not valid.", code="invalid")
    invitation = Invitation.objects.select_for_update().select_related("tenant").get(pk=found.pk)
    if not invitation.is_usable:
        raise ValidationError(f"This invitation is {invitation.status}.", code=invitation.status)
    if not EmailAddress.objects.filter(user=user, email__iexact=invitation.email, verified=True).exists():
        raise ValidationError(
            f"This invitation was sent to {invitation.email}. Sign in with that address (verified) to accept it.",
            code="wrong_email",
        )
    if Membership.objects.filter(tenant=invitation.tenant, user=user).exists():
        raise ValidationError("You are already a member of this organisation.", code="already_member")
    membership = Membership.objects.create(tenant=invitation.tenant, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    _audit(action="invitation.accept", actor=user, tenant=invitation.tenant, target=invitation, request=request,
           data={"email": invitation.email, "role": invitation.role})
    _audit(action="member.add", actor=user, tenant=invitation.tenant, target=membership, request=request,
           data={"user": user.email, "role": invitation.role})
    return membership


def _check_owner_rules(*, membership: Membership, new_role: str | None, actor_role: str | None) -> None:
    touches_owner = membership.role == Role.OWNER or new_role == Role.OWNER
    if touches_owner and not can(actor_role, Action.MEMBERS_MANAGE_OWNERS):
        raise PermissionDenied("Only an owner can change or remove an owner.")
    if membership.role == Role.OWNER and new_role != Role.OWNER and _owner_count(membership.tenant) <= 1:
        raise ValidationError("An organisation always needs at least one owner. Transfer ownership first.",
                              code="last_owner")


@transaction.atomic
def member_change_role(*, membership: Membership, role: str, actor: AbstractBaseUser | None = None,
                       actor_role: str | None = None, request: HttpRequest | None = None) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    membership = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
    _lock_owners(membership.tenant)
    if membership.role == role:
        return membership
    _check_owner_rules(membership=membership, new_role=role, actor_role=actor_role)
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    _audit(action="member.role_change", actor=actor, tenant=membership.tenant, target=membership, request=request,
           data={"user": membership.user.email, "from": previous, "to": role})
    return membership


def member_remove_check(*, membership: Membership, actor_role: str | None) -> None:
    """Would ``member_remove`` refuse? Asked before the confirmation page, so nobody confirms a removal that
    cannot happen (the sole owner leaving, an admin removing an owner). ``member_remove`` checks again, locked."""
    _check_owner_rules(membership=membership, new_role=None, actor_role=actor_role)


@transaction.atomic
def member_remove(*, membership: Membership, actor: AbstractBaseUser | None = None, actor_role: str | None = None,
                  request: HttpRequest | None = None) -> None:
    """Remove a member. Their sessions lose the tenant on their next request: ``tenants.access`` re-reads the
    membership every time."""
    membership = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
    _lock_owners(membership.tenant)
    _check_owner_rules(membership=membership, new_role=None, actor_role=actor_role)
    tenant, user, role = membership.tenant, membership.user, membership.role
    _audit(action="member.remove", actor=actor, tenant=tenant, target=membership, request=request,
           data={"user": user.email, "role": role})
    membership.delete()


@transaction.atomic
def ownership_transfer(*, tenant: Tenant, from_membership: Membership, to_membership: Membership,
                       actor: AbstractBaseUser | None = None, request: HttpRequest | None = None) -> Membership:
    """The current owner hands ownership to another member and becomes an admin."""
    rows = {m.pk: m for m in Membership.objects.select_for_update().select_related("user").filter(
        tenant=tenant, pk__in=[from_membership.pk, to_membership.pk])}
    source, target = rows.get(from_membership.pk), rows.get(to_membership.pk)
    if source is None or target is None:
        raise ValidationError("Both people must be members of the organisation.")
    if source.role != Role.OWNER:
        raise PermissionDenied("Only an owner can transfer ownership.")
    if source.pk == target.pk:
        raise ValidationError("You already own this organisation.")
    previous = target.role
    target.role = Role.OWNER
    target.save(update_fields=["role"])
    source.role = Role.ADMIN
    source.save(update_fields=["role"])
    _audit(action="member.ownership_transfer", actor=actor, tenant=tenant, target=target, request=request,
           data={"from_user": source.user.email, "to_user": target.user.email, "to_previous_role": previous})
    return target


# --- API keys --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str  # shown to the user once, never stored


_KEY_VERBS = {Action.KEYS_CREATE: "create", Action.KEYS_ROTATE: "rotate", Action.KEYS_LIMITS: "change",
              Action.KEYS_REVOKE: "revoke"}


def _check_key_action(*, actor_role: str | None, action: Action, scopes: list[str]) -> None:
    """Refuse a key action the caller's role may not take on a key with these scopes (``tenants.permissions.
    may_manage_key``), whichever door it came through.

    ``actor_role`` is the caller's role in the tenant: a ``Role``, ``permissions.SUPPORT`` or
    ``permissions.API_KEY``. ``None`` is platform code acting outside any tenant role (management commands,
    the staff console), which the matrix does not bind."""
    if actor_role is None or may_manage_key(actor_role, action, scopes):
        return
    beyond = [scope for scope in scopes if scope not in grantable_scopes(actor_role)]
    if not can(actor_role, action) or not beyond:
        raise PermissionDenied(f"Your role ({actor_role}) does not allow {action}.")
    raise PermissionDenied(
        f"Your role ({actor_role}) can't {_KEY_VERBS[action]} a key with the {', '.join(beyond)} "
        f"scope{'s' if len(beyond) > 1 else ''}: only owners and admins can."
    )


def _validate_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s not in ApiKey.Scope.values]
    if unknown or not scopes:
        raise ValidationError({"scopes": f"Choose one or more of {', '.join(ApiKey.Scope.values)}."})
    return [s for s in ApiKey.Scope.values if s in scopes]  # canonical order, no duplicates


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    created_by=None,
    scopes: list[str] | None = None,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    limits: dict[str, int | Decimal | None] | None = None,
    actor_role: str | None = None,
    request: HttpRequest | None = None,
) -> IssuedKey:
    scopes = _validate_scopes(scopes if scopes is not None else [ApiKey.Scope.INFERENCE])
    _check_key_action(actor_role=actor_role, action=Action.KEYS_CREATE, scopes=scopes)
    limits = limits or {}
    _check_key_limits(tenant=tenant, limits=limits, within_tenant=True)
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    secret = keys.new_secret()
    key_id = keys.new_key_id()
    while ApiKey.objects.filter(key_id=key_id).exists():
        key_id = keys.new_key_id()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        key_id=key_id,
        name=name,
        secret_hash=keys.hash_secret(secret),
        scopes=scopes,
        allowed_models=list(dict.fromkeys(allowed_models or [])),
        expires_at=expires_at,
        created_by=created_by,
        **limits,
    )
    _audit(action="api_key.create", actor=created_by, tenant=tenant, target=api_key, request=request,
           data={"key_id": key_id, "name": name, "scopes": api_key.scopes,
                 "models": api_key.allowed_models,
                 "expires_at": expires_at.isoformat() if expires_at else None})
    transaction.on_commit(lambda: snapshot.publish_api_keys([api_key]), robust=True)  # see snapshot.reconcile
    return IssuedKey(api_key=api_key, plaintext=keys.format_key(key_id, secret))


def _limit_text(name: str, value) -> str:
    return quotas.format_aud(value) if quotas.BY_FIELD[name].money else f"{value:,}"


def _check_key_limits(*, tenant: Tenant, limits: dict[str, int | Decimal | None], within_tenant: bool) -> None:
    """Refuse key limits that are not positive or, with ``within_tenant``, that are above the organisation's
    effective limit: the data plane would quietly apply the organisation's instead, and a limit that does
    not do what it says is worse than a clear "no". The organisation's limits are billing's (plans and
    overrides): billing installs the function that resolves them (``tenants.hooks``)."""
    quotas.check_fields(limits)
    ceilings = hooks.tenant_limits(tenant) if within_tenant else {}
    errors = {}
    for name, value in limits.items():
        if value is None:
            continue
        label = str(ApiKey._meta.get_field(name).verbose_name)
        label = label[0].upper() + label[1:]
        if isinstance(value, bool) or not isinstance(value, int | Decimal) or value <= 0:
            errors[name] = f"{label} must be a positive number."
            continue
        ceiling = ceilings.get(name)
        if ceiling is not None and value > ceiling:
            errors[name] = (
                f"{label.capitalize()} can't be more than your organisation's limit of {_limit_text(name, ceiling)}. "
                "Lower it, or leave it empty to use the organisation's limit."
            )
    if errors:
        raise ValidationError(errors)



@transaction.atomic
def api_key_set_limits(*, api_key: ApiKey, limits: dict[str, int | Decimal | None],
                       actor: AbstractBaseUser | None = None, actor_role: str | None = None,
                       request: HttpRequest | None = None, within_tenant: bool = True) -> ApiKey:
    """Set some of a key's own limits (``None`` clears one: the organisation's limit applies).

    Tenant admins are held to their organisation's effective limits (``within_tenant``); platform staff may set
    any value, which the data plane still caps at the organisation's. Only changed values are checked, so an
    organisation limit lowered later does not block editing the key's other limits. Live within a second."""
    api_key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
    _check_key_action(actor_role=actor_role, action=Action.KEYS_LIMITS, scopes=api_key.scopes)
    if api_key.revoked_at is not None:
        raise ValidationError("A revoked key's limits can't be changed.")
    quotas.check_fields(limits)
    before = {name: getattr(api_key, name) for name in ApiKey.LIMIT_FIELDS}
    changed = {name: value for name, value in limits.items() if before[name] != value}
    _check_key_limits(tenant=api_key.tenant, limits=changed, within_tenant=within_tenant)
    if not changed:
        return api_key
    for name, value in changed.items():
        setattr(api_key, name, value)
    api_key.save(update_fields=list(changed))
    _audit(action="api_key.limits.update", actor=actor, tenant=api_key.tenant, target=api_key, request=request,
           data={"key_id": api_key.key_id, "before": {n: quotas.recorded(before[n]) for n in changed},
                 "after": {n: quotas.recorded(v) for n, v in changed.items()}})
    transaction.on_commit(lambda: snapshot.publish_api_keys([api_key]), robust=True)  # see snapshot.reconcile
    return api_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: AbstractBaseUser | None = None, actor_role: str | None = None,
                   request: HttpRequest | None = None) -> ApiKey:
    api_key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
    _check_key_action(actor_role=actor_role, action=Action.KEYS_REVOKE, scopes=api_key.scopes)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        _audit(action="api_key.revoke", actor=actor, tenant=api_key.tenant, target=api_key, request=request,
               data={"key_id": api_key.key_id})
    transaction.on_commit(lambda: snapshot.publish_api_keys([api_key]), robust=True)  # see snapshot.reconcile
    return api_key


MAX_ROTATION_GRACE = timedelta(days=30)


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, grace: timedelta, actor: AbstractBaseUser | None = None,
                   actor_role: str | None = None, request: HttpRequest | None = None) -> IssuedKey:
    """Give the key a new secret. The old secret keeps working for ``grace`` (zero: it stops now), then stops;
    the key id, scopes and limits stay the same."""
    if grace < timedelta(0) or grace > MAX_ROTATION_GRACE:
        raise ValidationError({"grace_seconds": "The grace period must be between 0 and 30 days."})
    api_key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
    _check_key_action(actor_role=actor_role, action=Action.KEYS_ROTATE, scopes=api_key.scopes)
    if api_key.status != "active":
        raise ValidationError(f"A {api_key.status} key cannot be rotated.")
    now = timezone.now()
    secret = keys.new_secret()
    if grace > timedelta(0):
        api_key.previous_secret_hash = api_key.secret_hash
        api_key.previous_secret_expires_at = now + grace
    else:
        api_key.previous_secret_hash = ""
        api_key.previous_secret_expires_at = None
    api_key.secret_hash = keys.hash_secret(secret)
    api_key.rotated_at = now
    api_key.save(update_fields=["secret_hash", "previous_secret_hash", "previous_secret_expires_at", "rotated_at"])
    _audit(action="api_key.rotate", actor=actor, tenant=api_key.tenant, target=api_key, request=request,
           data={"key_id": api_key.key_id, "grace_seconds": int(grace.total_seconds())})
    transaction.on_commit(lambda: snapshot.publish_api_keys([api_key]), robust=True)  # see snapshot.reconcile
    return IssuedKey(api_key=api_key, plaintext=keys.format_key(api_key.key_id, secret))


# --- staff -----------------------------------------------------------------------------------------
@transaction.atomic
def act_as_start(*, staff_user, tenant: Tenant, reason: str, request: HttpRequest | None = None) -> dict:
    """Open an explicit, time-boxed support session on a tenant. Returns the grant the caller keeps in the
    staff member's session; ``tenants.access`` honours it while its ``SupportSession`` is open and unexpired."""
    if not staff_user.is_staff:
        raise PermissionDenied("Only platform staff can act as a tenant.")
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why you need to act as this tenant."})
    started = timezone.now()
    session = SupportSession.objects.create(
        staff=staff_user, tenant=tenant, reason=reason[:500], started_at=started,
        expires_at=started + timedelta(minutes=settings.STAFF_ACT_AS_MINUTES),
    )
    _audit(action="staff.act_as.start", actor=staff_user, tenant=tenant, target=tenant, request=request,
           data={"reason": reason, "session": str(session.pk), "expires_at": session.expires_at.isoformat()})
    return {"session": str(session.pk), "tenant": str(tenant.pk), "slug": tenant.slug, "name": tenant.name,
            "staff": str(staff_user.pk), "started": started.timestamp(), "expires": session.expires_at.timestamp(),
            "reason": reason}


@transaction.atomic
def act_as_end(*, session_id: str | None, end: str = SupportSession.End.ENDED,
               request: HttpRequest | None = None) -> bool:
    """Close a support session and audit its end, once: the row is locked and closed only if still open, so the
    staff member ending it, the next request noticing it expired and the periodic job can race harmlessly.
    Returns whether this call closed it. An expired session's duration is its full length, not the time until
    someone noticed."""
    if end not in SupportSession.End.values:
        raise ValueError(f"unknown end {end!r}")
    session = (SupportSession.objects.select_for_update(of=("self",)).select_related("tenant", "staff")
               .filter(pk=session_id, ended_at__isnull=True).first() if session_id else None)
    if session is None:
        return False
    now = timezone.now()
    if end != SupportSession.End.EXPIRED and session.expires_at <= now:
        end = SupportSession.End.EXPIRED  # it had already run out: say so, whoever closes it
    session.ended_at = now
    session.end = end
    session.save(update_fields=["ended_at", "end"])
    last = min(now, session.expires_at)
    # From the job there is no request: the entry names the staff member, with no network address.
    _audit(action="staff.act_as.end", actor=session.staff, tenant=session.tenant, target=session.tenant,
           request=request, data={"session": str(session.pk), "end": end,
                                  "duration_s": round((last - session.started_at).total_seconds())})
    return True


def act_as_close_expired() -> int:
    """Close every support session that has run out (the periodic job): each gets its end entry even if the
    staff member never comes back. One transaction per session, so one failure does not hold up the rest."""
    expired = SupportSession.objects.filter(ended_at__isnull=True, expires_at__lte=timezone.now())
    return sum(act_as_end(session_id=str(pk), end=SupportSession.End.EXPIRED)
               for pk in expired.values_list("pk", flat=True))
