"""Openness, APP 1.7 to 1.9: the tenant's settings page names the automated decisions Wattle makes for it
(sentiment-driven escalation and automated QA scoring), each with the information it uses, as the privacy policy
does."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils.html import escape

from core.privacy import AUTOMATED_DECISIONS
from tenants.models import Role
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def test_the_settings_page_names_each_automated_decision_and_what_it_uses(owner_client, acme):
    page = owner_client.get(f"/t/{acme.slug}/settings/").content.decode()
    names = [decision.name for decision in AUTOMATED_DECISIONS]
    assert {"Sentiment-driven escalation", "Automated quality (QA) scoring"} <= set(names)
    for decision in AUTOMATED_DECISIONS:
        assert escape(decision.name) in page and escape(decision.information_used) in page


def test_every_member_reads_them_other_tenants_get_a_404_and_visitors_sign_in(client, acme, bluegum, member_of):
    agent = sign_in(Client(), member_of(acme, Role.AGENT))  # the least privileged role
    response = agent.get(f"/t/{acme.slug}/settings/")
    assert response.status_code == 200
    assert all(escape(d.name) in response.content.decode() for d in AUTOMATED_DECISIONS)
    assert agent.get(f"/t/{bluegum.slug}/settings/").status_code == 404
    anonymous = client.get(f"/t/{acme.slug}/settings/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
