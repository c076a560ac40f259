"""Email the tenants app sends. Called after commit, with ids, so a rolled-back change sends nothing."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string

from tenants.models import Invitation


def send_invitation(*, invitation_id, accept_url: str) -> None:
    invitation = Invitation.objects.select_related("tenant", "invited_by").filter(pk=invitation_id).first()
    if invitation is None or not invitation.is_usable:
        return
    context = {
        "invitation": invitation,
        "tenant": invitation.tenant,
        "inviter": invitation.invited_by.email if invitation.invited_by else "",
        "accept_url": accept_url,
        "site_name": settings.WATTLE_SITE_NAME,
    }
    subject = render_to_string("tenants/email/invitation_subject.txt", context).strip()
    body = render_to_string("tenants/email/invitation_message.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])
