"""The privacy policy (APP 1, APP 5): versioned and dated, with the automated-decision section APP 1.7 to 1.9 ask
for from 10 December 2026, sub-processors, Sydney hosting, retention defaults, access and complaints."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.utils.html import escape

from core.privacy import AUTOMATED_DECISIONS, PRIVACY_POLICY_VERSIONS, SUBPROCESSORS

pytestmark = pytest.mark.django_db


@pytest.fixture
def policy(client) -> str:
    response = client.get("/privacy/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_policy_shows_its_version_and_the_date_it_took_effect(policy):
    assert PRIVACY_POLICY_VERSIONS[0].version == settings.PRIVACY_POLICY_VERSION
    assert f"Version {settings.PRIVACY_POLICY_VERSION}, in effect from 5 December 2026" in policy
    for earlier in PRIVACY_POLICY_VERSIONS[1:]:
        assert earlier.version in policy  # earlier versions and what changed stay listed


def test_the_automated_decision_section_names_escalation_and_qa_scoring(policy):
    section = policy.split('id="automated-decisions"', 1)[1].split("<h2", 1)[0]
    assert "APP 1.7 to 1.9" in section and "10 December 2026" in section
    assert "Sentiment-driven escalation" in section and "Automated quality (QA) scoring" in section
    for decision in AUTOMATED_DECISIONS:
        assert escape(decision.information_used) in section  # what personal information the program uses
    assert "review" in section  # and that a person can review the outcome


def test_the_policy_names_hosting_sub_processors_retention_access_and_the_oaic(policy):
    assert "Sydney (ap-southeast-2)" in policy
    for processor in SUBPROCESSORS:
        assert processor.name in policy
    assert "Billing contacts" in policy and "never prompts" in policy
    assert "<strong>not stored</strong> unless" in policy and "7 years" in policy
    assert "privacy@wattle.example" in policy and "30 days" in policy
    assert "Office of the Australian Information Commissioner" in policy


def test_sign_up_records_the_version_in_force(client):
    # The collection notice links the policy and names its current version.
    page = client.get("/accounts/signup/").content.decode()
    assert settings.PRIVACY_POLICY_VERSION in page
