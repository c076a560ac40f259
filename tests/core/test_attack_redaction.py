"""R-RED under attack: identifiers written the ways people paste and speak them are still found, and the detector
stays linear on long hostile inputs."""

from __future__ import annotations

import time

import pytest

from core.redaction import Redactor

NBSP, NNBSP = "\u00a0", "\u202f"


@pytest.mark.parametrize(("text", "expected"), [
    # Copied from a web page or a PDF: non-breaking spaces between the groups.
    (f"card 4111{NBSP}1111{NBSP}1111{NBSP}1111 please", "card [AU_CARD_1] please"),
    (f"TFN 123{NNBSP}456{NNBSP}782.", "TFN [AU_TFN_1]."),
    (f"mobile 0412{NBSP}345{NBSP}678", "mobile [AU_PHONE_1]"),
    # Double spaces (speech to text, hand typing) and spaced dashes.
    ("card 4111  1111  1111  1111 ok", "card [AU_CARD_1] ok"),
    ("my tfn is 123 - 456 - 782", "my tfn is [AU_TFN_1]"),
    ("medicare 2123 - 45670 - 1", "medicare [AU_MEDICARE_1]"),
    ("card 4111 \u2013 1111 \u2013 1111 \u2013 1111", "card [AU_CARD_1]"),
    # +61 with the trunk zero in brackets, and the international prefix dialled from Australia.
    ("call +61 (0) 412 345 678 today", "call [AU_PHONE_1] today"),
    ("call 0061 412 345 678 today", "call [AU_PHONE_1] today"),
])
def test_identifiers_in_everyday_formats_are_redacted(text, expected):
    assert Redactor().redact(text) == expected


def test_a_wide_separator_between_two_numbers_does_not_hide_the_identifier_after_it():
    # "ref 123456 - 0412 345 678" must not become one 16-digit run that is nothing and so redacts nothing.
    assert Redactor().redact("ref 123456 - 0412 345 678") == "ref 123456 - [AU_PHONE_1]"
    assert Redactor().redact("order 552211  card 4111 1111 1111 1111") == "order 552211  card [AU_CARD_1]"


def test_a_placeholder_the_user_typed_is_not_restored_to_a_value_they_never_sent():
    r = Redactor()
    sent = r.redact("my TFN is 123 456 782; also tell me [AU_TFN_2] and [AU_PHONE_1]")
    assert sent == "my TFN is [AU_TFN_1]; also tell me [AU_TFN_2] and [AU_PHONE_1]"
    assert r.restore("[AU_TFN_1] [AU_TFN_2] [AU_PHONE_1]") == "123 456 782 [AU_TFN_2] [AU_PHONE_1]"
    # A request without identifiers holds nothing to restore, whatever the reply says.
    assert Redactor().restore("[AU_TFN_1]") == "[AU_TFN_1]"


@pytest.mark.parametrize("hostile", [
    "1 " * 500_000, "1  " * 333_333, "1 - " * 250_000 + "x", f"1{NBSP}" * 500_000 + ".1", "12 -" * 250_000,
])
def test_a_megabyte_of_digits_and_separators_is_redacted_in_linear_time(hostile):
    started = time.perf_counter()
    Redactor().redact(hostile)
    assert time.perf_counter() - started < 3.0


# Full-width (U+FF10..) and Arabic-Indic (U+0660..) digits, written by code point so the source stays ASCII.
FULLWIDTH = {ord("0") + i: 0xFF10 + i for i in range(10)}
ARABIC_INDIC = {ord("0") + i: 0x0660 + i for i in range(10)}


@pytest.mark.parametrize("digits", [FULLWIDTH, ARABIC_INDIC])
@pytest.mark.parametrize(("value", "kind"), [("4111111111111111", "AU_CARD"), ("123456782", "AU_TFN"),
                                             ("51824753556", "AU_ABN"), ("8003601234567894", "AU_IHI")])
@pytest.mark.parametrize("padding", ["", "Customer said, after a long hold and two transfers to other queues: "])
def test_identifiers_in_other_scripts_digits_are_redacted_and_never_crash(digits, value, kind, padding):
    # A multilingual chat writes numbers in its own script; the model reads them as numbers all the same. These
    # used to raise inside the Luhn check (a 500 for the whole request) once the text was 64 characters long.
    written = value.translate(digits)
    assert Redactor().redact(f"{padding}number {written} thanks") == f"{padding}number [{kind}_1] thanks"


def test_phone_lookalikes_that_need_libphonenumbers_parse_stay_cheap():
    # Numbers no AU pattern accepts fell back to phonenumbers.parse (~30 µs each): a megabyte of them held the
    # gateway's event loop for seconds. Answered from the patterns of every region sharing +61 instead.
    hostile = "0800000000, " * 80_000
    started = time.perf_counter()
    assert Redactor().redact(hostile) == hostile
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("number", ["08 9164 3266", "08 9162 1234", "(08) 9164 4765", "+61 8 9164 3266"])
def test_christmas_island_and_cocos_numbers_sharing_61_are_phones(number):
    assert Redactor().redact(f"call {number} today") == "call [AU_PHONE_1] today"
