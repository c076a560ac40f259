"""R-RED: Australian identifiers are found with their checksums, offline; placeholders are stable within a request;
the originals come back in replies, also across streamed pieces."""

from __future__ import annotations

import re
import socket

import pytest

from core import redaction
from core.redaction import Redactor
from tests.inference.redaction_corpus import LOOKALIKES, PER_TYPE, VALID


def _survives(value: str, kind: str, redacted: str) -> bool:
    if value in redacted:
        return True
    digits = re.sub(r"\D", "", value)
    textual = (redaction.EMAIL, redaction.PASSPORT, redaction.LICENCE)
    return kind not in textual and digits in re.sub(r"\D", "", redacted)


def test_corpus_has_enough_valid_identifiers_of_every_checksummed_type():
    counts: dict[str, int] = {}
    for kind, _, _ in VALID:
        counts[kind] = counts.get(kind, 0) + 1
    for kind in (redaction.TFN, redaction.MEDICARE, redaction.ABN, redaction.ACN, redaction.CARD, redaction.IHI):
        assert counts[kind] >= PER_TYPE
    assert set(counts) == set(redaction.TYPES)
    assert len(LOOKALIKES) >= 500


def test_recall_on_valid_identifiers_is_at_least_99_percent_per_type():
    missed: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for kind, value, sentence in VALID:
        totals[kind] = totals.get(kind, 0) + 1
        if _survives(value, kind, Redactor().redact(sentence)):
            missed.setdefault(kind, []).append(sentence)
    for kind, total in totals.items():
        assert len(missed.get(kind, [])) <= total * 0.01, (kind, missed.get(kind))


def test_lookalikes_with_failing_checksums_are_left_alone():
    flagged = [sentence for _, sentence in LOOKALIKES if Redactor().redact(sentence) != sentence]
    assert len(flagged) <= len(LOOKALIKES) * 0.01, flagged[:5]


def test_compliance_examples_are_redacted_with_their_types():
    r = Redactor()
    text = r.redact("ABN 51 824 753 556; ACN 004 085 616; Medicare 2123 45670 1; TFN 123 456 782.")
    assert text == "ABN [AU_ABN_1]; ACN [AU_ACN_1]; Medicare [AU_MEDICARE_1]; TFN [AU_TFN_1]."
    assert r.counts == {"AU_ABN": 1, "AU_ACN": 1, "AU_MEDICARE": 1, "AU_TFN": 1}


def test_same_value_gets_the_same_placeholder_within_a_request_however_written():
    r = Redactor()
    first = r.redact("TFN 123 456 782, mobile 0412 345 678")
    second = r.redact("again: 123456782 or +61 412 345 678, and 0298765432")
    assert first == "TFN [AU_TFN_1], mobile [AU_PHONE_1]"
    assert second == "again: [AU_TFN_1] or [AU_PHONE_1], and [AU_PHONE_2]"
    assert r.counts == {"AU_TFN": 2, "AU_PHONE": 3}


def test_a_new_request_starts_numbering_again_and_knows_nothing_of_the_last():
    first = Redactor()
    assert first.redact("call 0412 345 678") == "call [AU_PHONE_1]"
    second = Redactor()
    assert second.redact("call 0298765432") == "call [AU_PHONE_1]"
    assert second.restore("[AU_PHONE_1]") == "0298765432"


def test_numbers_without_check_digits_need_their_context_words():
    assert Redactor().redact("Order 062-000 shipped, ref 12345678") == "Order 062-000 shipped, ref 12345678"
    assert Redactor().redact("BSB 062-000 account 12345678") == "BSB [AU_BSB_1] account [AU_BANK_ACCOUNT_1]"
    assert Redactor().redact("Code N1234567 applied") == "Code N1234567 applied"
    assert Redactor().redact("passport N1234567") == "passport [AU_PASSPORT_1]"
    assert Redactor().redact("ticket 12345677") == "ticket 12345677"  # a valid legacy TFN's digits, no context
    assert Redactor().redact("old tax file number 12345677") == "old tax file number [AU_TFN_1]"


def test_restore_puts_the_originals_back_and_leaves_unknown_placeholders():
    r = Redactor()
    r.redact("email jo@example.com.au, TFN 123 456 782")
    assert r.restore("Sent to [AU_EMAIL_1] re [AU_TFN_1] and [AU_TFN_9]") == (
        "Sent to jo@example.com.au re 123 456 782 and [AU_TFN_9]")
    body = b'{"choices":[{"message":{"content":"TFN [AU_TFN_1] for [AU_EMAIL_1]"}}]}'
    assert r.restore_json(body) == b'{"choices":[{"message":{"content":"TFN 123 456 782 for jo@example.com.au"}}]}'


def test_stream_restorer_joins_a_placeholder_split_across_pieces():
    r = Redactor()
    r.redact("My TFN is 123 456 782")
    restorer = r.stream_restorer()
    pieces = ["Your TFN ", "[AU", "_TF", "N_1", "] is noted [", "not a placeholder]", " ok [AU_"]
    out = "".join(restorer.feed(0, piece) for piece in pieces) + restorer.flush(0)
    assert out == "Your TFN 123 456 782 is noted [not a placeholder] ok [AU_"
    assert restorer.pending() == []


def test_stream_restorer_keeps_choices_apart():
    r = Redactor()
    r.redact("call 0412 345 678")
    restorer = r.stream_restorer()
    assert restorer.feed(0, "A [AU_PH") == "A "
    assert restorer.feed(1, "B [AU_PHONE_1]") == "B 0412 345 678"
    assert restorer.feed(0, "ONE_1].") == "0412 345 678."


def test_redaction_runs_with_the_network_blocked(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    r = Redactor()
    text = r.redact("jo@example.com.au, 0412 345 678, 4111 1111 1111 1111, ABN 51 824 753 556")
    assert text == "[AU_EMAIL_1], [AU_PHONE_1], [AU_CARD_1], ABN [AU_ABN_1]"


@pytest.mark.parametrize(("tenant", "header", "expected"), [
    ("off", False, "off"), ("off", True, "redact"), ("redact", True, "redact"), ("restore", True, "restore"),
    ("restore", False, "restore"), ("bogus", False, "off"), ("bogus", True, "redact"),
])
def test_the_header_asks_for_at_least_redact(tenant, header, expected):
    assert redaction.effective_mode(tenant, header) == expected
