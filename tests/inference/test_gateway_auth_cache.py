"""The data plane's key cache: bounded by evicting the coldest key, and never holding a secret."""

from __future__ import annotations

import gc

import pytest

from inference.gateway import errors
from inference.gateway.auth import KeyAuthenticator
from portal.redis import new_async_redis

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
