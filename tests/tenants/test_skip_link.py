"""Keyboard users skip the console's sidebar: on console pages "Skip to content" goes past the navigation to the
page itself; elsewhere it goes to the main landmark."""

from __future__ import annotations

import re


def test_the_skip_link_passes_the_console_navigation(owner_client, acme):
    html = owner_client.get(f"/t/{acme.slug}/keys/").content.decode()
    assert '<a class="skip-link" href="#console-content">' in html
    target = html.index('id="console-content"')
    assert html.index('aria-label="Console"') < target < html.index("<h1")


def test_other_pages_skip_to_main(client):
    html = client.get("/privacy/").content.decode()
    assert re.search(r'<a class="skip-link" href="#main">', html) and 'id="main"' in html
