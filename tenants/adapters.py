"""allauth extension points: sign-up creates the tenant (or joins an invitation), and MFA rules for removing
authenticators."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.urls import reverse

from core.proxies import request_client_ip
from tenants import services
from tenants.emails import add_html_part, site
from tenants.models import Membership
from tenants.permissions import MFA_REQUIRED_ROLES

SESSION_INVITATION = "wattle_invitation"


def pending_invitation(request):
    """The usable invitation this browser arrived with (``/invite/<token>/`` stashes its token), if any."""
    token = request.session.get(SESSION_INVITATION) if request is not None else None
    if not token:
        return None
    invitation = services.invitation_for_token(token)
    if invitation is None or not invitation.is_usable:
        request.session.pop(SESSION_INVITATION, None)
        return None
    return invitation


class AccountAdapter(DefaultAccountAdapter):
    def get_client_ip(self, request) -> str:
        """The address the login throttle counts and user sessions show: the one ``TRUSTED_PROXIES`` vouches for
        (resolved by ``ClientAddressMiddleware``), never allauth's own reading of X-Forwarded-For."""
        ip = request_client_ip(request)
        if not ip:
            raise PermissionDenied("Unable to determine client IP address")
        return ip

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        """The site every account email names is ours (WATTLE_SITE_NAME at WATTLE_BASE_URL's host), whatever host
        the request came in on: no "Hello from localhost:18500!". Links stay on the host the person used, as the
        invitation's do (ALLOWED_HOSTS bounds it)."""
        super().send_mail(template_prefix, email, {**context, "current_site": site()})

    def render_mail(self, template_prefix, email, context, headers=None):
        """Plain text from allauth's templates (ours where overridden) and the brand's HTML part made from it."""
        message = super().render_mail(template_prefix, email, context, headers=headers)
        return add_html_part(message)

    def save_user(self, request, user, form, commit=True):
        """Create the user and, in the same transaction, their organisation (with the recorded acceptance of
        terms and privacy policy). People who sign up from an invitation join that tenant instead."""
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=True)
            data = form.cleaned_data
            versions = {"terms_version": settings.TERMS_VERSION,
                        "privacy_version": settings.PRIVACY_POLICY_VERSION}
            if getattr(form, "invitation", None) is not None:
                services.account_signup_invited(user=user, invitation=form.invitation, request=request, **versions)
            else:
                services.account_signup(
                    user=user,
                    organisation=data["organisation"],
                    billing_email=data.get("billing_email") or data["email"],
                    abn=data.get("abn") or "",
                    state=data.get("state") or "",
                    request=request,
                    **versions,
                )
        return user

    def get_signup_redirect_url(self, request) -> str:
        invitation = pending_invitation(request)
        if invitation is not None:
            return reverse("invitation_accept", args=[request.session[SESSION_INVITATION]])
        return reverse("dashboard")


class MFAAdapter(DefaultMFAAdapter):
    def can_delete_authenticator(self, authenticator: Authenticator) -> bool:
        """Staff keep at least one passkey; owners and admins keep at least one second factor."""
        user = authenticator.user
        others = Authenticator.objects.filter(user=user).exclude(pk=authenticator.pk).exclude(
            type=Authenticator.Type.RECOVERY_CODES
        )
        if (user.is_staff and authenticator.type == Authenticator.Type.WEBAUTHN
                and not others.filter(type=Authenticator.Type.WEBAUTHN).exists()):
            return False
        return not (
            authenticator.type != Authenticator.Type.RECOVERY_CODES
            and not others.exists()
            and Membership.objects.filter(user=user, role__in=MFA_REQUIRED_ROLES).exists()
        )
