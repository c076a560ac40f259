"""The data plane's bounded caches evict the least recently used entry, never everything at once."""

from __future__ import annotations

import pytest

from inference.lru import LRU


def test_full_cache_evicts_only_the_least_recently_used():
    cache: LRU[str, int] = LRU(3)
    for name in "abc":
        cache.put(name, ord(name))
    assert cache.get("a") == ord("a")  # now the most recently used
    cache.put("d", 4)
    assert "b" not in cache
    assert [cache.get(k) for k in "acd"] == [ord("a"), ord("c"), 4]
    assert len(cache) == 3


def test_missing_key_returns_the_default():
    cache: LRU[str, int] = LRU(1)
    sentinel = object()
    assert cache.get("x", sentinel) is sentinel


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        LRU(0)
