"""What Wattle tells people about its handling of personal information, as data: one source for the privacy
policy page, the tenant settings page and each tenant's data processing summary (page and JSON), so that what
the policy says and what a tenant copies into its own notices cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# AWS regions by the city a privacy notice names.
REGION_NAMES = {"ap-southeast-2": "Sydney", "ap-southeast-4": "Melbourne"}

# Audit metadata (who did what, when; never content) is kept this long: the event-logging policy's default.
AUDIT_METADATA_YEARS = 7


def region_label(region: str) -> str:
    city = REGION_NAMES.get(region)
    return f"{city} ({region})" if city else region


@dataclass(frozen=True)
class SubProcessor:
    name: str
    purpose: str
    data: str
    location: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


SUBPROCESSORS = (
    SubProcessor(
        name="Amazon Web Services",
        purpose="Hosting: the API, the models, the database, backups and the audit archive.",
        data="Everything Wattle holds, encrypted at rest.",
        location="Sydney, Australia (ap-southeast-2)",
    ),
    SubProcessor(
        name="Stripe",
        purpose="Billing and payments.",
        data="Billing contacts (organisation name, billing email, ABN) and payment details only; never prompts, "
             "replies or end-customer information.",
        location="Stripe's Australian entity; card data is held by Stripe",
    ),
)


@dataclass(frozen=True)
class AutomatedDecision:
    """A decision a program makes that can significantly affect a person (APP 1.7 to 1.9, from 10 December 2026)."""

    name: str
    what_it_decides: str
    information_used: str
    human_review: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


AUTOMATED_DECISIONS = (
    AutomatedDecision(
        name="Sentiment-driven escalation",
        what_it_decides="Whether a customer conversation is handed from the automated assistant to a human agent, "
                        "based on the sentiment (for example frustration or distress) the model reads in it.",
        information_used="The text of the conversation's messages, its channel and language.",
        human_review="The tenant's agents see why a conversation was escalated and can take over or hand back at "
                     "any time; a customer can always ask for a person.",
    ),
    AutomatedDecision(
        name="Automated quality (QA) scoring",
        what_it_decides="A quality score for a conversation handled by a contact-centre agent, which can inform "
                        "coaching and performance review.",
        information_used="The transcript of the conversation and the tenant's scoring criteria.",
        human_review="Scores are advice to the tenant's supervisors: a person reviews a score before it is used "
                     "about an agent, and can correct or discard it.",
    ),
)


@dataclass(frozen=True)
class PolicyVersion:
    version: str  # the date it took effect, ISO 8601: what sign-up records as accepted
    changes: str


# The privacy policy's versions, newest first. The newest is the one in force (settings.PRIVACY_POLICY_VERSION
# reads it from here); sign-up records the version each person accepted.
PRIVACY_POLICY_VERSIONS = (
    PolicyVersion(
        version="2026-12-05",
        changes="When the automated decisions run (on conversations sent through the conversation API; QA scoring "
                "on a share the organisation sets, one in ten by default) and how each is recorded; staff access to "
                "retained transcripts only through audited, time-limited emergency access.",
    ),
    PolicyVersion(
        version="2026-12-04",
        changes="Automated decisions described in full ahead of APP 1.7 to 1.9 taking effect on 10 December 2026 "
                "(what each decides, the information used, human review); sub-processors, retention defaults, "
                "data breaches and each organisation's data processing summary added.",
    ),
    PolicyVersion(version="2026-11-01", changes="First version."),
)
