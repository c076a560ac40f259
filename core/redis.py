"""Redis clients for the control plane (sync) and the data plane (async), built by one factory.

With ``REDIS_URL`` set these are real redis-py clients (and, for the data plane's per-request commands,
``core.fastredis``). Without it they are fakeredis clients sharing one in-process server, so the embedded
default runs exactly the same commands and Lua scripts as production.

Django-free: the project hands its settings object over once at start-up (``configure``; ``portal.apps`` does),
and ``REDIS_URL`` and ``REDIS_KEY_PREFIX`` are read from it on every call, so a test that changes them is seen.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from core.fastredis import FastRedis, HotCommands, RedisPyCommands


class RedisSettings(Protocol):
    REDIS_URL: str | None
    REDIS_KEY_PREFIX: str


class _FromEnvironment:
    """Until ``configure`` is called (a script outside the project): the environment's values."""

    @property
    def REDIS_URL(self) -> str | None:
        return os.environ.get("REDIS_URL") or None

    @property
    def REDIS_KEY_PREFIX(self) -> str:
        return os.environ.get("REDIS_KEY_PREFIX", "wattle:")


settings: RedisSettings = _FromEnvironment()


def configure(source: RedisSettings) -> None:
    """Read ``REDIS_URL`` and ``REDIS_KEY_PREFIX`` from ``source`` from now on (the project's settings)."""
    global settings, _sync_client
    settings = source
    _sync_client = None


_lock = threading.Lock()
_sync_client: redis.Redis | None = None
_fake_server = None


def _shared_fake_server():
    global _fake_server
    if _fake_server is None:
        import fakeredis

        _fake_server = fakeredis.FakeServer()
    return _fake_server


def key(*parts: str) -> str:
    """A namespaced Redis key: every key Wattle writes starts with ``REDIS_KEY_PREFIX``."""
    return settings.REDIS_KEY_PREFIX + ":".join(parts)


def get_redis() -> redis.Redis:
    """The process-wide synchronous client (thread-safe connection pool)."""
    global _sync_client
    if _sync_client is None:
        with _lock:
            if _sync_client is None:
                if settings.REDIS_URL:
                    _sync_client = redis.Redis.from_url(
                        settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, health_check_interval=15
                    )
                else:
                    import fakeredis

                    _sync_client = fakeredis.FakeRedis(server=_shared_fake_server())
    return _sync_client


def new_async_redis(url: str | None = None) -> aredis.Redis:
    """A new asyncio client. redis-py's async pools belong to one event loop, so each loop makes its own.

    The data plane fails fast: one immediate retry (a connection Redis reset after a restart), never a
    back-off that would hold requests while Redis is down; the outage policies decide what happens then.
    """
    url = url or settings.REDIS_URL
    if url:
        return aredis.Redis.from_url(
            url,
            socket_timeout=2,
            socket_connect_timeout=0.5,
            health_check_interval=15,
            max_connections=512,
            retry=AsyncRetry(NoBackoff(), 1),
        )
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=_shared_fake_server())



def new_hot_redis(url: str | None = None) -> HotCommands:
    """The data plane's per-request commands: a pipelined connection to Redis (``core.fastredis``), or the
    in-process stand-in through redis-py, behind the same protocol, when there is no Redis."""
    url = url or settings.REDIS_URL
    if url:
        return FastRedis(url)
    import fakeredis

    return RedisPyCommands(fakeredis.FakeAsyncRedis(server=_shared_fake_server()))
