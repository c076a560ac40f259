"""The conversation records of the contract: ``ClosedConversation`` (ingested by the control plane) and
``EscalationDecision`` (the ADM record), encoded by the data plane and decoded by the control plane."""

from __future__ import annotations

import orjson
import pytest

from core import contract, sentiment
from core.contract import ClosedConversation, ConversationTurn, EscalationDecision, RecordError


def _closed(**changes) -> ClosedConversation:
    base = dict(
        conversation_id="conv_abc", tenant="t-1", key_id="k1", model="m", channel="whatsapp", language="en-AU",
        opened=1.0, closed=9.0, customer_id="cust-7",
        turns=(ConversationTurn("user", "I'm not happy, my number is <PHONE_1>", 2.0, -0.55, "negative"),
               ConversationTurn("assistant", "Sorry to hear that.", 3.0, request_id="req_1")),
        escalated=True, escalation_reason="negative_sentiment", escalation_detail="1 turn in a row at or below -0.5",
        escalated_at=2.0, escalation_turn=0, metadata={"queue": "billing"}, redaction="redact",
    )
    base.update(changes)
    return ClosedConversation(**base)


def test_a_closed_conversation_round_trips():
    record = _closed()
    assert ClosedConversation.decode(record.encode()) == record
    assert ClosedConversation.decode(record.encode().decode()) == record
    assert orjson.loads(record.encode())["v"] == contract.VERSION


def test_an_unescalated_conversation_without_optional_fields_decodes():
    raw = orjson.dumps({"v": contract.VERSION, "conversation_id": "c", "tenant": "t", "key_id": "k", "model": "m",
                        "channel": "sms", "language": "en-AU", "opened": 1, "closed": 2})
    record = ClosedConversation.decode(raw)
    assert record.turns == () and record.escalated is False and record.escalation_turn is None
    assert record.metadata == {} and record.redaction == "off"


@pytest.mark.parametrize("changes", [
    {"channel": "pigeon"},
    {"tenant": ""},
    {"customer_id": "x" * 300},
    {"escalated": True, "escalation_reason": ""},
    {"escalated": False, "escalation_reason": "trigger_phrase"},
    {"escalation_reason": "gut_feeling"},
    {"escalation_turn": 5},
])
def test_a_malformed_closed_conversation_is_refused(changes):
    with pytest.raises(RecordError):
        ClosedConversation.decode(_closed(**changes).encode())


@pytest.mark.parametrize("raw", [
    b"not json", b'{"v": 99, "conversation_id": "c"}',
    b'{"v": 1, "conversation_id": "c", "tenant": "t"}',
    b'{"v": 1, "conversation_id": "c", "tenant": "t", "key_id": "k", "model": "m", "channel": "sms",'
    b' "language": "en-AU", "opened": 1, "closed": 2, "turns": [{"role": "system", "text": "x", "time": 1}]}',
    b'{"v": 1, "conversation_id": "c", "tenant": "t", "key_id": "k", "model": "m", "channel": "sms",'
    b' "language": "en-AU", "opened": 1, "closed": 2, "turns": [{"role": "user", "text": "x", "time": 1,'
    b' "sentiment": 4}]}',
    b'{"v": 1, "conversation_id": "c", "tenant": "t", "key_id": "k", "model": "m", "channel": "sms",'
    b' "language": "en-AU", "opened": "soon", "closed": 2}',
])
def test_bytes_that_are_not_a_closed_conversation_are_refused(raw):
    with pytest.raises(RecordError):
        ClosedConversation.decode(raw)


def _decision(**changes) -> EscalationDecision:
    text = sentiment.text_digest("I want to speak to a human")
    rule = sentiment.EscalationRule().digest()
    base = dict(decision_id="conv_abc:1", tenant="t-1", conversation_id="conv_abc", key_id="k1", time=5.0, turn=1,
                escalate=True, reason="trigger_phrase", text_sha256=text, rule_sha256=rule,
                inputs_sha256=sentiment.decision_inputs_digest(text_sha256=text, rule_sha256=rule, scorer="lexicon",
                                                               score=0.0, trail=[]),
                scorer="lexicon", score=0.0, label="neutral")
    base.update(changes)
    return EscalationDecision(**base)


def test_an_escalation_decision_round_trips_and_carries_no_text():
    record = _decision()
    raw = record.encode()
    assert EscalationDecision.decode(raw) == record
    assert b"human" not in raw


@pytest.mark.parametrize("changes", [
    {"text_sha256": "abc"}, {"rule_sha256": "Z" * 64}, {"inputs_sha256": 7}, {"reason": ""}, {"escalate": False},
    {"score": 1.5}, {"tenant": ""}, {"decision_id": ""},
])
def test_a_malformed_escalation_decision_is_refused(changes):
    with pytest.raises(RecordError):
        EscalationDecision.decode(_decision(**changes).encode())


def test_the_stream_and_state_keys_are_versioned_and_distinct():
    keys = {contract.conversation_key("c1"), contract.conversation_lock_key("c1"),
            contract.conversations_closed_stream_key(), contract.adm_decisions_stream_key()}
    assert len(keys) == 4 and all(f"v{contract.VERSION}" in k for k in keys)
