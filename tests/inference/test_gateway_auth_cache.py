"""The data plane's key cache: bounded by evicting the coldest key, and never holding a secret."""

from __future__ import annotations

import asyncio
import gc

import pytest

from core.redis import new_async_redis
from inference.gateway import errors
from inference.gateway.auth import KeyAuthenticator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def authenticator(settings):
    settings.INFERENCE_KEY_CACHE_SIZE = 3
    client = new_async_redis()
    yield KeyAuthenticator(client)
    await client.aclose()


async def _issue(acme, issue_key):
    from asgiref.sync import sync_to_async

    return await sync_to_async(issue_key)(acme)


async def test_a_flood_of_unknown_key_ids_evicts_only_the_coldest(authenticator, acme, issue_key):
    busy = await _issue(acme, issue_key)
    await authenticator.authenticate(f"Bearer {busy}".encode())
    busy_id = busy.split("_")[1]
    for n in range(5):
        with pytest.raises(errors.GatewayError):
            await authenticator.authenticate(f"Bearer wtl_{n:012d}_{'x' * 32}".encode())
        await authenticator.authenticate(f"Bearer {busy}".encode())  # the busy key stays warm
    assert busy_id in authenticator._cache
    assert len(authenticator._cache) == 3


async def test_no_cache_is_keyed_by_or_holds_the_secret(authenticator, acme, issue_key):
    key = await _issue(acme, issue_key)
    secret = key.split("_", 2)[2]
    await authenticator.authenticate(f"Bearer {key}".encode())
    gc.collect()
    for name, value in vars(authenticator).items():
        if isinstance(value, dict):
            assert secret not in value and secret not in map(str, value.values()), name
    cached = [repr(entry) for entry in authenticator._cache._items.values()]
    assert cached and not any(secret in entry for entry in cached)


async def test_a_remembered_secret_lets_no_other_secret_through(authenticator, acme, issue_key):
    """A busy key's secret is HMAC'd once per record fetch and then recognised by its fingerprint; any other
    secret for the same key id still gets the full check, and fails it."""
    key = await _issue(acme, issue_key)
    key_id = key.split("_")[1]
    hashed = []
    real_hash = authenticator._hash_secret
    authenticator._hash_secret = lambda secret: hashed.append(1) or real_hash(secret)
    for _ in range(3):
        await authenticator.authenticate(f"Bearer {key}".encode())
    assert len(hashed) == 1  # the first request verified it; the next two matched its fingerprint
    for forged in (key[:-1] + ("A" if key[-1] != "A" else "B"), f"wtl_{key_id}_{'x' * 43}"):
        with pytest.raises(errors.GatewayError) as refused:
            await authenticator.authenticate(f"Bearer {forged}".encode())
        assert refused.value.status == 401
    assert len(hashed) == 3
    await authenticator.authenticate(f"Bearer {key}".encode())
    assert len(hashed) == 3  # the real secret is still remembered after the forgeries


async def test_a_rotated_secret_is_checked_again_when_the_record_changes(authenticator, acme, issue_key):
    """The remembered fingerprint belongs to one fetched record: the record that replaces it (a rotation, say)
    starts with none, so the old secret gets the full check against the new hash."""
    from datetime import timedelta

    from asgiref.sync import sync_to_async

    from tenants import services
    from tenants.models import ApiKey

    key = await _issue(acme, issue_key)
    await authenticator.authenticate(f"Bearer {key}".encode())
    await authenticator.authenticate(f"Bearer {key}".encode())  # now remembered
    api_key = await ApiKey.objects.aget(key_id=key.split("_")[1])
    rotated = await sync_to_async(services.api_key_rotate)(api_key=api_key, grace=timedelta(0), actor_role="owner")
    authenticator._ttl = 0.0  # the next request re-reads the record, as it would half a second later
    with pytest.raises(errors.GatewayError) as refused:
        await authenticator.authenticate(f"Bearer {key}".encode())
    assert refused.value.status == 401
    assert (await authenticator.authenticate(f"Bearer {rotated.plaintext}".encode())).key_id == api_key.key_id


async def test_while_redis_is_repopulated_a_known_key_is_served_at_once_and_unknown_ones_share_one_wait(
        authenticator, acme, issue_key, settings):
    from core.redis import get_redis
    from core.redis import key as redis_key

    settings.INFERENCE_SNAPSHOT_WAIT_S = 0.3
    authenticator._snapshot_wait_s = 0.3
    known = await _issue(acme, issue_key)
    await authenticator.authenticate(f"Bearer {known}".encode())
    client = get_redis()
    client.delete(*client.keys(redis_key("*")))  # Redis came back empty
    authenticator._ttl = 0.0  # the next request re-reads the record
    record = await authenticator.authenticate(f"Bearer {known}".encode())
    assert record.key_id == known.split("_")[1]
    assert authenticator._snapshot_wait is None  # served from its last record: never held
    waits = []
    wait = authenticator._wait_for_snapshot
    authenticator._wait_for_snapshot = lambda ready: waits.append(ready) or wait(ready)
    unknown = [f"Bearer wtl_{n:012d}_{'x' * 43}".encode() for n in range(3)]
    results = await asyncio.gather(*(authenticator.authenticate(u) for u in unknown), return_exceptions=True)
    assert [getattr(r, "status", None) for r in results] == [503, 503, 503]  # held, then told to retry
    assert len(waits) == 1  # one wait (one poll of Redis) for all three


async def test_a_key_whose_tenant_record_is_missing_asks_for_it_and_answers_503(authenticator, acme, issue_key,
                                                                                 settings):
    from billing.tasks import publish_tenant_record
    from core import contract
    from core.redis import get_redis

    key = await _issue(acme, issue_key)
    get_redis().delete(contract.tenant_record_key(str(acme.pk)))  # lost alone; the snapshot is marked whole
    with pytest.raises(errors.GatewayError) as refused:
        await authenticator.authenticate(f"Bearer {key}".encode())
    assert refused.value.status == 503
    assert str(acme.pk) in authenticator._tenant_asked_at
    await asyncio.gather(*authenticator._jobs)  # the job went to the broker (a worker runs it, as here)
    await asyncio.to_thread(publish_tenant_record, str(acme.pk))
    assert (await authenticator.authenticate(f"Bearer {key}".encode())).tenant == str(acme.pk)
