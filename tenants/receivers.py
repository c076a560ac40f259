"""Security events from allauth and django.contrib.auth, written to the audit trail (R-AUD-4).

Receivers only translate a signal into one ``audit.services.record`` call; they change nothing else.
"""

from __future__ import annotations

from allauth.account import signals as account_signals
from allauth.account.internal.flows.login import get_authentication_records
from allauth.mfa import signals as mfa_signals
from django.contrib.auth.signals import user_logged_out, user_login_failed
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.dispatch import receiver

from audit.services import record


@receiver(account_signals.user_logged_in, dispatch_uid="wattle_audit_login")
def on_login(sender, request, user, **kwargs) -> None:
    records = get_authentication_records(request, user) if request is not None else []
    methods = sorted({r.get("type") or r.get("method") for r in records if r.get("method")})
    record(action="auth.login", actor=user, target=user, request=request, data={"methods": methods})


MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a usable address
_is_email = EmailValidator()


def attempted_email(credentials: dict) -> str | None:
    """The address a failed sign-in tried, if what was typed is one. Anything else may be a password typed
    into the wrong box (Django masks only the password field), so it is not kept."""
    typed = credentials.get("email") or credentials.get("username") or credentials.get("login")
    if not isinstance(typed, str) or len(typed) > MAX_EMAIL_LENGTH:
        return None
    try:
        _is_email(typed)
    except ValidationError:
        return None
    return typed


@receiver(user_login_failed, dispatch_uid="wattle_audit_login_failed")
def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # The address tried is what an investigation needs; what was typed otherwise is nobody's business.
    email = attempted_email(credentials)
    record(action="auth.login_failed", request=request,
           data={"email": email} if email is not None else {"identifier": "invalid"})


@receiver(user_logged_out, dispatch_uid="wattle_audit_logout")
def on_logout(sender, request, user, **kwargs) -> None:
    if user is not None:
        record(action="auth.logout", actor=user, target=user, request=request)


@receiver(account_signals.password_changed, dispatch_uid="wattle_audit_password_changed")
def on_password_changed(sender, request, user, **kwargs) -> None:
    record(action="auth.password_change", actor=user, target=user, request=request)


@receiver(account_signals.password_reset, dispatch_uid="wattle_audit_password_reset")
def on_password_reset(sender, request, user, **kwargs) -> None:
    record(action="auth.password_reset", actor=user, target=user, request=request)


@receiver(account_signals.email_confirmed, dispatch_uid="wattle_audit_email_confirmed")
def on_email_confirmed(sender, request, email_address, **kwargs) -> None:
    record(action="account.email_verified", actor=email_address.user, target=email_address.user, request=request,
           data={"email": email_address.email})


def _mfa_data(authenticator, **extra) -> dict:
    return {"type": authenticator.type, "authenticator": authenticator.pk, **extra}


@receiver(mfa_signals.authenticator_added, dispatch_uid="wattle_audit_mfa_added")
def on_mfa_added(sender, request, user, authenticator, **kwargs) -> None:
    record(action="mfa.add", actor=user, target=user, request=request, data=_mfa_data(authenticator))


@receiver(mfa_signals.authenticator_removed, dispatch_uid="wattle_audit_mfa_removed")
def on_mfa_removed(sender, request, user, authenticator, **kwargs) -> None:
    record(action="mfa.remove", actor=user, target=user, request=request, data=_mfa_data(authenticator))


@receiver(mfa_signals.authenticator_reset, dispatch_uid="wattle_audit_mfa_reset")
def on_mfa_reset(sender, request, user, authenticator, **kwargs) -> None:
    record(action="mfa.reset", actor=user, target=user, request=request, data=_mfa_data(authenticator))


@receiver(mfa_signals.authenticator_used, dispatch_uid="wattle_audit_mfa_used")
def on_mfa_used(sender, request, user, authenticator, reauthenticated=False, passwordless=False, **kwargs) -> None:
    record(action="mfa.use", actor=user, target=user, request=request,
           data=_mfa_data(authenticator, reauthenticated=bool(reauthenticated), passwordless=bool(passwordless)))


@receiver(mfa_signals.authentication_failed, dispatch_uid="wattle_audit_mfa_failed")
def on_mfa_failed(sender, request, user, authenticator=None, reauthentication=False, **kwargs) -> None:
    data = _mfa_data(authenticator) if authenticator is not None else {}
    record(action="mfa.fail", actor=user, target=user, request=request,
           data={**data, "reauthentication": bool(reauthentication)})
