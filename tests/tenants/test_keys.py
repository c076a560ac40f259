from __future__ import annotations

import pytest

from tenants import keys
from tenants.models import ApiKey


def test_key_round_trip_and_format():
    key_id, secret = keys.new_key_id(), keys.new_secret()
    raw = keys.format_key(key_id, secret)
    assert raw.startswith("wtl_") and len(key_id) == 12
    assert keys.parse_key(raw) == (key_id, secret)


@pytest.mark.parametrize("raw", ["", "sk-abc", "wtl_short", "wtl_ABCDEFGHIJKL_secret", "wtl_abcdefghijkl-secret",
                                 "wtl_abcdefghijkl_"])
def test_malformed_keys_do_not_parse(raw):
    assert keys.parse_key(raw) is None


def test_secret_is_stored_only_as_a_keyed_hash(acme, issue_key):
    raw = issue_key(acme)
    key_id, secret = keys.parse_key(raw)
    stored = ApiKey.objects.get(key_id=key_id)
    assert secret not in stored.secret_hash and len(stored.secret_hash) == 64
    assert keys.secret_matches(secret, stored.secret_hash)
    assert not keys.secret_matches(secret + "x", stored.secret_hash)


def test_hash_depends_on_the_pepper(settings):
    before = keys.hash_secret("s3cret")
    settings.API_KEY_PEPPER = "another-pepper"
    assert keys.hash_secret("s3cret") != before


def test_key_creation_is_audited_and_published(acme, issue_key):
    from audit.models import AuditEntry
    from core.contract import api_key_record_key
    from core.redis import get_redis

    raw = issue_key(acme, name="ivr")
    key_id, _ = keys.parse_key(raw)
    entry = AuditEntry.objects.get(action="api_key.create")
    assert entry.tenant == acme and entry.data["key_id"] == key_id
    assert raw not in str(entry.data)
    assert get_redis().get(api_key_record_key(key_id)) is not None
