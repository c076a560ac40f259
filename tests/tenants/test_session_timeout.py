"""R-SEC-2: sessions time out. A session ends when the browser closes, or at SESSION_COOKIE_AGE (8 hours by
default) when the person asked to be remembered; an expired session is sent to sign in again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from tenants.models import Role
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _signed_in(user, **extra) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"login": user.email, "password": PASSWORD, **extra})
    assert response.status_code == 302 and "_auth_user_id" in client.session
    return client


def test_a_session_ends_with_the_browser_by_default(acme, member_of):
    client = _signed_in(member_of(acme, Role.DEVELOPER))
    assert client.session.get_expire_at_browser_close()
    assert client.session.get_expiry_age() <= settings.SESSION_COOKIE_AGE


def test_a_remembered_session_lasts_at_most_eight_hours(acme, member_of):
    client = _signed_in(member_of(acme, Role.DEVELOPER), remember="on")
    assert settings.SESSION_COOKIE_AGE <= 8 * 3600
    assert 0 < client.session.get_expiry_age() <= settings.SESSION_COOKIE_AGE


def test_an_expired_session_is_sent_to_sign_in(acme, member_of):
    client = _signed_in(member_of(acme, Role.DEVELOPER), remember="on")
    assert client.get(f"/t/{acme.slug}/").status_code == 200
    Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get(f"/t/{acme.slug}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_malformed_session_cookie_is_a_sign_in_not_an_error(acme):
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = "not-a-session" * 40
    response = client.get(f"/t/{acme.slug}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
