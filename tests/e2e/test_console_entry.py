"""A person reaches the console: the login page renders in a real browser and a verified user signs in."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_page_renders_and_a_user_signs_in(page, portal_server, alice, acme):
    page.goto(f"{portal_server.base_url}/accounts/login/")
    assert page.title().startswith("Sign In")
    page.get_by_label("Email").fill(alice.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    page.wait_for_url("**/dashboard/")
    assert page.get_by_role("heading", name="Acme Contact").is_visible()
    # The strict CSP holds: nothing on the page needed an inline script or style.
    assert not [e for e in page.console_errors if "Content Security Policy" in e]


def test_wrong_password_shows_a_form_error(page, portal_server, alice):
    page.goto(f"{portal_server.base_url}/accounts/login/")
    page.get_by_label("Email").fill(alice.email)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign In", exact=True).click()
    assert page.get_by_text("The email address and/or password you specified are not correct.").is_visible()
    assert "/accounts/login/" in page.url


def test_login_page_fits_a_phone(phone_page, portal_server, db):
    phone_page.goto(f"{portal_server.base_url}/accounts/login/")
    overflow = phone_page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert phone_page.get_by_label("Email").is_visible()
