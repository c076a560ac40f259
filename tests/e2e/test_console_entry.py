"""A person reaches the console: the login page renders in a real browser, a developer signs in straight to
their organisation, and an owner without two-factor authentication is asked to set it up first."""

from __future__ import annotations

import pytest

from tenants.models import Role
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def _sign_in(page, base_url: str, email: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    assert page.title().startswith("Sign in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_a_developer_signs_in_to_their_organisation(page, portal_server, acme, member_of):
    developer = member_of(acme, Role.DEVELOPER)
    _sign_in(page, portal_server.base_url, developer.email)
    page.wait_for_url(f"**/t/{acme.slug}/welcome/")
    assert page.get_by_role("heading", name="Get started with Acme Contact").is_visible()
    # The strict CSP holds: nothing on the page needed an inline script or style.
    assert not [e for e in page.console_errors if "Content Security Policy" in e]


def test_an_owner_without_mfa_is_asked_to_set_it_up(page, portal_server, alice, acme):
    _sign_in(page, portal_server.base_url, alice.email)
    page.wait_for_url("**/account/mfa-required/**")
    assert page.get_by_role("heading", name="Protect your account first").is_visible()
    assert page.get_by_role("link", name="Set up an authenticator app").is_visible()


def test_wrong_password_shows_a_form_error(page, portal_server, alice):
    page.goto(f"{portal_server.base_url}/accounts/login/")
    page.get_by_label("Email").fill(alice.email)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    assert page.get_by_text("The email address and/or password you specified are not correct.").is_visible()
    assert "/accounts/login/" in page.url


def test_login_page_fits_a_phone(phone_page, portal_server, db):
    phone_page.goto(f"{portal_server.base_url}/accounts/login/")
    overflow = phone_page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert phone_page.get_by_label("Email").is_visible()
