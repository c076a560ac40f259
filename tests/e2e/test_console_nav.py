"""The console's navigation in Chromium: a sidebar of labelled groups on a desktop, a "Menu" button on a phone
that opens the same links, the current page marked, each link only for a role that may use it, and no page
wider than a 390 px phone whether the menu is open or closed."""

from __future__ import annotations

import os

import pytest

from tenants.models import Role
from tests.e2e.helpers import accessibility_problems, fits_width, scroll_width

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("WATTLE_NAV_SHOTS")  # a folder: save what each step looks like (for design review)


def _cookie(portal_server, user, **kwargs) -> dict:
    from django.conf import settings
    from django.test import Client

    from tests.conftest import add_totp, sign_in

    if kwargs.pop("totp", False):
        add_totp(user)
    client = sign_in(Client(), user, **kwargs)
    return {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": portal_server.base_url}


def _shot(page, name: str) -> None:
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def _console(page):
    return page.get_by_role("navigation", name="Console")


def test_desktop_sidebar_groups_the_links_and_marks_the_current_page(page, portal_server, alice, acme, issue_key):
    issue_key(acme, name="IVR production")
    page.context.add_cookies([_cookie(portal_server, alice, totp=True)])
    page.goto(f"{portal_server.base_url}/t/{acme.slug}/keys/")
    nav = _console(page)
    assert nav.get_by_role("button", name="Menu").is_hidden()  # a sidebar needs no button
    for group, links in {"Build": ["Playground", "API keys", "Models", "Request log"],
                         "Monitor": ["Usage", "Limits", "Conversations"],
                         "Organisation": ["Team", "Billing", "Settings"],
                         "Privacy": ["Audit trail", "Transcripts", "Individuals' requests", "Data processing"]}.items():
        listed = nav.get_by_role("list", name=group)
        assert listed.get_by_role("link").all_inner_texts() == links, group
    current = nav.locator("[aria-current=page]")
    assert current.all_inner_texts() == ["API keys"]
    # Beside the page, not above it: the heading starts level with the sidebar's top.
    box, heading = nav.bounding_box(), page.get_by_role("heading", level=1).bounding_box()
    assert heading["x"] > box["x"] + box["width"] and heading["y"] < box["y"] + box["height"]
    assert accessibility_problems(page) == []
    _shot(page, "keys-1280")
    for path, name in [("", "home"), ("settings/", "settings"), ("playground/", "playground"), ("usage/", "usage")]:
        page.goto(f"{portal_server.base_url}/t/{acme.slug}/{path}")
        _shot(page, f"{name}-1280")
    nav.get_by_role("link", name="Usage").click()
    page.wait_for_url("**/usage/")
    assert _console(page).locator("[aria-current=page]").all_inner_texts() == ["Usage"]


def test_an_agent_sees_only_the_links_its_role_may_use(page, portal_server, acme, member_of):
    agent = member_of(acme, Role.AGENT)
    page.context.add_cookies([_cookie(portal_server, agent)])
    page.goto(f"{portal_server.base_url}/t/{acme.slug}/")
    links = _console(page).get_by_role("link").all_inner_texts()
    assert "Playground" in links and "Settings" in links
    for hidden in ("API keys", "Team", "Usage", "Billing", "Audit trail", "Request log", "Conversations"):
        assert hidden not in links
    labels = _console(page).locator(".console-nav-label").all_inner_texts()
    assert all(_console(page).get_by_role("list", name=label).get_by_role("link").count() for label in labels)


def test_phone_menu_opens_and_closes_and_never_widens_the_page(phone_page, portal_server, alice, acme):
    page = phone_page
    page.context.add_cookies([_cookie(portal_server, alice, totp=True)])
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    for path, name in [("", "home"), ("keys/", "keys"), ("settings/", "settings")]:
        page.goto(f"{portal_server.base_url}/t/{acme.slug}/{path}")
        nav = _console(page)
        menu = nav.get_by_role("button", name="Menu")
        assert menu.get_attribute("aria-expanded") == "false"
        assert nav.get_by_role("link", name="Billing").is_hidden()
        assert fits_width(page), f"{name} is {scroll_width(page)}px wide closed"
        _shot(page, f"{name}-390-closed")
        menu.click()
        assert menu.get_attribute("aria-expanded") == "true"
        assert nav.get_by_role("link", name="Billing").is_visible()
        assert nav.locator("[aria-current=page]").is_visible()
        assert fits_width(page), f"{name} is {scroll_width(page)}px wide open"
        assert accessibility_problems(page) == []
        _shot(page, f"{name}-390-open")
    page.keyboard.press("Escape")  # from the focused button, inside the nav
    assert menu.get_attribute("aria-expanded") == "false"
    menu.click()
    nav.get_by_role("link", name="API keys").click()
    page.wait_for_url("**/keys/")
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_staff_nav_is_a_sidebar_on_a_desktop_and_a_menu_on_a_phone(request, portal_server, staff):
    cookie = _cookie(portal_server, staff, passkey_used=True)
    for fixture in ("page", "phone_page"):
        page = request.getfixturevalue(fixture)
        page.context.add_cookies([cookie])
        page.goto(f"{portal_server.base_url}/staff/plans/")
        nav = page.get_by_role("navigation", name="Staff")
        assert nav.locator("[aria-current=page]").all_inner_texts() == ["Plans & prices"]
        menu = nav.get_by_role("button", name="Menu")
        if fixture == "phone_page":
            menu.click()
        assert nav.get_by_role("link", name="Incidents").is_visible()
        assert fits_width(page)
        _shot(page, f"staff-{page.viewport_size['width']}")
