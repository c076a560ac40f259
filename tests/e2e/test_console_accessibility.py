"""Every console page, in Chromium, at desktop and phone width: labelled controls, named buttons and links,
WCAG AA contrast, one heading, no horizontal scrolling, keyboard reachable actions, and a CSP that holds."""

from __future__ import annotations

import pytest

from tenants.models import ApiKey, Membership, Role
from tests.conftest import PASSWORD, add_totp
from tests.e2e.helpers import accessibility_problems, fits_width, keyboard_reaches, totp

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGES = [
    "/t/{slug}/", "/t/{slug}/welcome/", "/t/{slug}/keys/", "/t/{slug}/keys/new/", "/t/{slug}/keys/{key}/",
    "/t/{slug}/keys/{key}/rotate/", "/t/{slug}/members/", "/t/{slug}/members/{member}/remove/",
    "/t/{slug}/usage/", "/t/{slug}/settings/", "/account/mfa-required/", "/accounts/2fa/",
    "/accounts/sessions/", "/accounts/password/change/",
]


def _sign_in_with_totp(page, base_url: str, user) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    page.get_by_label("Code").fill(totp("JBSWY3DPEHPK3PXP"))
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url("**/t/**")


@pytest.fixture
def signed_in_owner(alice, acme, bluegum, member_of, issue_key):
    add_totp(alice)
    Membership.objects.create(tenant=bluegum, user=alice, role=Role.DEVELOPER)  # two tenants: the switcher shows
    issue_key(acme, name="IVR production")
    member_of(acme, Role.DEVELOPER, email="dev@acme.example")
    return alice


def _urls(acme) -> list[str]:
    key = ApiKey.objects.get(tenant=acme)
    member = Membership.objects.get(tenant=acme, role=Role.DEVELOPER)
    return [p.format(slug=acme.slug, key=key.key_id, member=member.pk) for p in PAGES]


@pytest.mark.parametrize("fixture", ["page", "phone_page"])
def test_console_pages_pass_the_accessibility_check(request, fixture, portal_server, signed_in_owner, acme):
    page = request.getfixturevalue(fixture)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    _sign_in_with_totp(page, portal_server.base_url, signed_in_owner)
    for url in _urls(acme):
        response = page.goto(f"{portal_server.base_url}{url}")
        assert response.status == 200, url
        assert accessibility_problems(page) == [], url
        assert fits_width(page), f"{url} scrolls sideways at {page.viewport_size['width']}px"
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_console_works_from_the_keyboard(page, portal_server, signed_in_owner, acme, bluegum):
    _sign_in_with_totp(page, portal_server.base_url, signed_in_owner)
    page.goto(f"{portal_server.base_url}/t/{acme.slug}/keys/")
    assert keyboard_reaches(page, ".skip-link")
    assert keyboard_reaches(page, "a:text('Create a key')")
    # The tenant switcher opens with the keyboard and lists both organisations.
    assert keyboard_reaches(page, ".switcher summary")
    page.keyboard.press("Enter")
    assert page.get_by_role("link", name="Bluegum Calls (developer)").is_visible()
    for _ in range(5):  # on through the menu to Bluegum, then follow it
        page.keyboard.press("Tab")
        if "Bluegum" in page.evaluate("document.activeElement.textContent"):
            break
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/t/{bluegum.slug}/")
    assert page.get_by_role("heading", name="Bluegum Calls").is_visible()


def test_api_docs_render_under_the_strict_csp(page, portal_server, db):
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{portal_server.base_url}/api/docs/")
    page.get_by_text("Wattle management API").first.wait_for()
    assert page.get_by_text("/api/v1/keys").first.is_visible()
    assert not [e for e in errors if "Content Security Policy" in e], errors
