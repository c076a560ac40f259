"""Email the tenants app sends. Called after commit, with ids, so a rolled-back change sends nothing."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

from core.mail import branded_html, domain
from tenants.models import Invitation


@dataclass(frozen=True)
class Site:
    """What allauth's emails call ``current_site``: our name and the public address's host, never the host a
    request happened to come in on."""

    name: str
    domain: str


def site() -> Site:
    return Site(name=settings.WATTLE_SITE_NAME, domain=domain(settings.WATTLE_BASE_URL))


def add_html_part(message):
    """Give a message the brand's HTML part, made from its text, unless it has one."""
    if hasattr(message, "attach_alternative") and not any(m == "text/html" for _, m in message.alternatives):
        message.attach_alternative(branded_html(message.body, subject=message.subject,
                                                site_name=settings.WATTLE_SITE_NAME,
                                                site_url=settings.WATTLE_BASE_URL), "text/html")
    return message


def branded_message(subject: str, body: str, recipients) -> EmailMultiAlternatives:
    """Every email we send: the plain text and the brand's HTML part. The subject is made one line: it quotes
    free text (an organisation's name), and a line break there would make Django refuse the whole email."""
    subject = " ".join(subject.split())
    return add_html_part(EmailMultiAlternatives(subject, body, settings.DEFAULT_FROM_EMAIL, list(recipients)))


def send_branded_mail(subject: str, body: str, recipients) -> int:
    return branded_message(subject, body, recipients).send()


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
    send_branded_mail(subject, body, [invitation.email])
