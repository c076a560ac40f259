"""The records the planes exchange through Redis: each round-trips, a record of another version is refused,
and what came before versions still reads where a rolling deploy needs it."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from core import ccaas, contract


def test_key_and_tenant_records_round_trip():
    key = contract.KeyRecord(key_id="abc123def456", tenant="t-1", hash="ff" * 32, scopes=("inference",),
                             models=("m",), expires=1.5, revoked=False, prev_hash="ee" * 32, prev_expires=2.5,
                             limits={"rpm": 5})
    tenant = contract.TenantRecord(tenant="t-1", status="active", limits={"tpm": 100})
    assert contract.KeyRecord.decode(key.encode()) == key
    assert contract.TenantRecord.decode(tenant.encode()) == tenant
    assert orjson.loads(key.encode())["v"] == contract.VERSION
    unpaid = contract.TenantRecord(tenant="t-1", status="active", unpaid_after=1_700_000_000.5)
    assert contract.TenantRecord.decode(unpaid.encode()) == unpaid
    priced = contract.TenantRecord(tenant="t-1", status="active", price_list="7")
    assert contract.TenantRecord.decode(priced.encode()) == priced


def test_a_tenant_record_from_before_unpaid_after_reads_as_paid():
    old = b'{"v": 1, "tenant": "t-1", "status": "active", "limits": {"tpm": 100}}'
    assert contract.TenantRecord.decode(old).unpaid_after is None
    with pytest.raises(contract.RecordError):
        contract.TenantRecord.decode(b'{"v": 1, "tenant": "t-1", "status": "active", "unpaid_after": "soon"}')


def test_a_tenant_record_from_before_price_lists_reads_as_the_platform_prices():
    old = b'{"v": 1, "tenant": "t-1", "status": "active", "limits": {"tpm": 100}}'
    assert contract.TenantRecord.decode(old).price_list is None
    with pytest.raises(contract.RecordError):
        contract.TenantRecord.decode(b'{"v": 1, "tenant": "t-1", "status": "active", "price_list": 7}')


def test_a_tenant_record_carries_its_redaction_mode_and_older_or_unknown_ones_read_as_off():
    restore = contract.TenantRecord(tenant="t-1", status="active", redaction="restore")
    assert contract.TenantRecord.decode(restore.encode()) == restore
    old = b'{"v": 1, "tenant": "t-1", "status": "active", "limits": {"tpm": 100}}'
    assert contract.TenantRecord.decode(old).redaction == "off"
    newer = b'{"v": 1, "tenant": "t-1", "status": "active", "redaction": "summarise"}'
    assert contract.TenantRecord.decode(newer).redaction == "off"


def test_a_usage_event_carries_redaction_counts_and_older_events_read_as_none():
    line = contract.encode_usage_event("req_1", "t-1", 200, 1.0, "k", "chat.completions", "m", "b", "", False, False,
                                       1, 2, 1.0, 2.0, 1.0, 0.1, "", {"AU_TFN": 2})
    assert contract.UsageEvent.decode(line).redactions == {"AU_TFN": 2}
    old = b'{"v": 1, "request_id": "r", "tenant": "t", "status": 200, "created": 1.0}'
    assert contract.UsageEvent.decode(old).redactions is None


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"key_id": "x"}', b'{"v": 99, "key_id": "x", "tenant": "t",'
                                 b' "hash": "h", "scopes": []}', b'{"v": 1, "tenant": "t"}', b"\xff"])
def test_anything_else_is_a_record_error(raw):
    with pytest.raises(contract.RecordError):
        contract.KeyRecord.decode(raw)


def test_backends_and_prices_round_trip_and_read_their_unversioned_forms():
    backends = [contract.BackendRecord(name="a", url="http://a", models=("m",), weight=5)]
    assert contract.decode_backends(contract.encode_backends(backends)) == backends
    assert contract.decode_backends(b'[{"name": "a", "url": "http://a", "models": ["m"], "weight": 5}]') == backends
    prices = {"m": (1.0, 2.0)}
    assert contract.decode_prices(contract.encode_prices(prices)) == prices
    assert contract.decode_prices(b'{"m": [1.0, 2.0]}') == prices
    with pytest.raises(contract.RecordError):
        contract.decode_prices(b'{"v": 99, "prices": {}}')


def test_price_lists_round_trip_merged_over_the_platform_prices():
    raw = contract.encode_prices({"m": (1.0, 2.0), "n": (3.0, 4.0)}, {"7": {"m": (5.0, 6.0)}})
    default, lists = contract.decode_price_lists(raw)
    assert default == {"m": (1.0, 2.0), "n": (3.0, 4.0)}
    assert lists == {"7": {"m": (5.0, 6.0), "n": (3.0, 4.0)}}  # a model the list lacks costs the platform price
    assert contract.decode_prices(raw) == default  # what a reader from before the lists takes from it
    old = contract.encode_prices({"m": (1.0, 2.0)})
    assert orjson.loads(old) == {"v": contract.VERSION, "prices": {"m": [1.0, 2.0]}}
    assert contract.decode_price_lists(old) == ({"m": (1.0, 2.0)}, {})
    assert contract.decode_price_lists(b'{"m": [1.0, 2.0]}') == ({"m": (1.0, 2.0)}, {})
    for bad in (b'{"v": 1, "prices": {}, "lists": {"7": {"m": [1.0]}}}', b'{"v": 1, "prices": {}, "lists": []}',
                b'{"v": 1}', b"nonsense"):
        with pytest.raises(contract.RecordError):
            contract.decode_price_lists(bad)


def test_the_hot_usage_encoder_writes_exactly_a_usage_event():
    values = dict(request_id="req_1", tenant="t-1", status=200, created=1.0, key_id="k", endpoint="chat.completions",
                  model="m", backend="b", error_code="", stream=True, client_disconnected=False, prompt_tokens=3,
                  completion_tokens=4, ttft_ms=1.5, duration_ms=2.5, time=1.0, overhead_ms=0.1, traceparent="00-x")
    line = contract.encode_usage_event(**values)
    assert set(orjson.loads(line)) == {f.name for f in dataclasses.fields(contract.UsageEvent)}
    assert contract.UsageEvent.decode(line) == contract.UsageEvent(**values)
    assert orjson.loads(contract.UsageEvent(**values).encode()) == orjson.loads(line)


def test_a_usage_event_from_before_versions_is_read_and_one_without_its_tenant_is_not():
    old = b'{"request_id": "r", "tenant": "t", "status": 200, "created": 1.0, "prompt_tokens": 2}'
    assert contract.UsageEvent.decode(old).prompt_tokens == 2
    with pytest.raises(contract.RecordError):
        contract.UsageEvent.decode(b'{"v": 1, "request_id": "r", "status": 200, "created": 1.0}')


def test_a_tenant_record_carries_retention_and_conversation_settings_and_older_ones_read_as_defaults():
    record = contract.TenantRecord(tenant="t-1", status="active", retention_days=30, escalation_threshold=-0.3,
                                   escalation_turns=3, escalation_phrases=("supervisor",),
                                   sentiment_scorer="embedding", sentiment_model="mistral-embed",
                                   analytics_sample=25)
    assert contract.TenantRecord.decode(record.encode()) == record
    old = contract.TenantRecord.decode(b'{"v": 1, "tenant": "t-1", "status": "active"}')
    assert old.retention_days == 0
    assert old.escalation_phrases == ccaas.DEFAULT_ESCALATION_PHRASES
    assert old.sentiment_scorer == "lexicon" and old.analytics_sample == 10
    odd = contract.TenantRecord.decode(
        b'{"v": 1, "tenant": "t-1", "status": "active", "retention_days": -4, "escalation_threshold": 7,'
        b' "sentiment_scorer": "tea leaves", "analytics_sample": 101, "escalation_phrases": [1, 2]}')
    assert (odd.retention_days, odd.escalation_threshold, odd.sentiment_scorer, odd.analytics_sample) == (
        0, ccaas.DEFAULT_ESCALATION_THRESHOLD, "lexicon", 10)
    assert odd.escalation_phrases == ccaas.DEFAULT_ESCALATION_PHRASES
