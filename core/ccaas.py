"""The contact-centre vocabulary shared by the playground's customer-conversation mode and, later, the
conversation API: the channels a customer writes or calls from, the language of the conversation, the
customer's id, and the instruction that tells the model where it is talking.

Django-free (``core``): both planes may use it. The customer id identifies a person to the tenant; it is never
sent to the model and never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Channel -> (label, what the model should keep in mind there).
CHANNELS: dict[str, tuple[str, str]] = {
    "voice": ("Voice", "Your reply is read aloud to a caller: plain sentences, no lists, links or formatting."),
    "webchat": ("Web chat", "Keep replies short and conversational; simple formatting is fine."),
    "whatsapp": ("WhatsApp", "Keep replies short, as in a messaging app; no headings or tables."),
    "sms": ("SMS", "Keep each reply under 300 characters of plain text."),
    "email": ("Email", "Write a complete, polite email reply with a greeting and a sign-off."),
}
DEFAULT_CHANNEL = "webchat"
DEFAULT_LANGUAGE = "en-AU"
# A BCP 47 tag as contact centres use them: language, then up to three subtags (en-AU, zh-Hant-TW, es-419).
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}")
_CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:@+\-]{1,64}")

# The tenant's escalation rule when it hasn't set its own (``TenantRecord`` carries the tenant's): a customer turn
# scoring at or below the threshold is negative; this many negative turns in a row, or one trigger phrase, hands
# the conversation to a person.
DEFAULT_ESCALATION_THRESHOLD = -0.5
DEFAULT_ESCALATION_TURNS = 2
DEFAULT_ESCALATION_PHRASES: tuple[str, ...] = (
    "speak to a human", "talk to a human", "speak to a person", "talk to a person", "real person",
    "speak to someone", "speak to a manager", "talk to a manager", "make a complaint", "ombudsman",
)
SENTIMENT_SCORERS = ("lexicon", "embedding")
DEFAULT_ANALYTICS_SAMPLE_PERCENT = 10
MAX_ESCALATION_PHRASES = 50
MAX_ESCALATION_PHRASE_CHARS = 100


class Invalid(ValueError):
    """A field a caller sent that isn't one of these; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Context:
    channel: str = DEFAULT_CHANNEL
    language: str = DEFAULT_LANGUAGE
    customer_id: str = ""

    def instruction(self) -> str:
        """What the model is told about the conversation (the customer id is not part of it)."""
        label, manner = CHANNELS[self.channel]
        return (f"You are a contact-centre agent answering a customer by {label}. {manner} "
                f"Write in the language of the tag {self.language}.")


def context(*, channel: object = None, language: object = None, customer_id: object = None) -> Context:
    """A validated ``Context`` from what a caller sent (None: the default); raises ``Invalid``."""
    if channel is None:
        channel = DEFAULT_CHANNEL
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise Invalid("channel", f"`channel` must be one of {', '.join(CHANNELS)}.")
    if language is None:
        language = DEFAULT_LANGUAGE
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        raise Invalid("language", "`language` must be a language tag such as en-AU.")
    if customer_id is None:
        customer_id = ""
    if not isinstance(customer_id, str) or (customer_id and not _CUSTOMER_ID.fullmatch(customer_id)):
        raise Invalid("customer_id", "`customer_id` must be 1 to 64 letters, digits or . _ : @ + -.")
    return Context(channel=channel, language=language, customer_id=customer_id)
