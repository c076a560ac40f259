"""The contact-centre vocabulary: channels, language tags and customer ids, and what the model is told."""

from __future__ import annotations

import pytest

from core import ccaas


def test_the_defaults_are_web_chat_in_australian_english():
    context = ccaas.context()
    assert (context.channel, context.language, context.customer_id) == ("webchat", "en-AU", "")


@pytest.mark.parametrize("channel", ["voice", "webchat", "whatsapp", "sms", "email"])
def test_each_channel_names_itself_and_the_language_to_the_model(channel):
    instruction = ccaas.context(channel=channel, language="vi-VN", customer_id="c-1").instruction()
    assert ccaas.CHANNELS[channel][0] in instruction and "vi-VN" in instruction
    assert "c-1" not in instruction  # the customer id identifies a person: the model never sees it


@pytest.mark.parametrize(("fields", "field"), [
    ({"channel": "fax"}, "channel"),
    ({"channel": 3}, "channel"),
    ({"language": "english please"}, "language"),
    ({"language": "e"}, "language"),
    ({"customer_id": "a b"}, "customer_id"),
    ({"customer_id": "x" * 65}, "customer_id"),
])
def test_anything_else_is_refused_naming_the_field(fields, field):
    with pytest.raises(ccaas.Invalid) as refused:
        ccaas.context(**fields)
    assert refused.value.field == field


def test_language_tags_as_contact_centres_write_them_are_accepted():
    for tag in ("en-AU", "zh-Hant-TW", "es-419", "mi"):
        assert ccaas.context(language=tag).language == tag
