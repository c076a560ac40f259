"""The data plane's pipelined Redis connection, against a real redis-server of its own."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core.fastredis import FastRedis
from tests.services import private_redis


@pytest.fixture(scope="module")
def server():
    with private_redis() as redis_server:
        yield redis_server


async def test_commands_and_replies(server):
    client = FastRedis(server.url)
    assert await client.execute("SET", "fr:a", "1") == b"OK"
    assert await client.execute("INCRBY", "fr:a", 41) == 42
    assert await client.execute("GET", "fr:a") == b"42"
    assert await client.execute("GET", "fr:missing") is None
    assert await client.execute("MGET", "fr:a", "fr:missing") == [b"42", None]
    await client.aclose()


async def test_concurrent_commands_share_one_connection_and_keep_their_order(server):
    client = FastRedis(server.url)
    results = await asyncio.gather(*(client.execute("INCR", "fr:counter") for _ in range(500)))
    assert sorted(results) == list(range(1, 501))
    assert results == sorted(results)  # replies matched to their commands in order
    await client.aclose()


async def test_errors_are_redis_py_exceptions(server):
    client = FastRedis(server.url)
    await client.execute("SET", "fr:text", "x")
    with pytest.raises(ResponseError, match="not an integer"):
        await client.execute("INCR", "fr:text")
    assert await client.execute("PING") == b"PONG"  # the connection is still good
    await client.aclose()


async def test_scripts_are_loaded_again_after_redis_forgot_them(server):
    client = FastRedis(server.url)
    script = "return tonumber(ARGV[1]) * 2"
    assert await client.evalsha(script, [], [21]) == 42
    await client.execute("SCRIPT", "FLUSH")  # as after a restart
    assert await client.evalsha(script, [], [5]) == 10
    await client.aclose()


async def test_on_reply_sees_the_reply_before_the_caller_resumes_and_not_errors(server):
    client = FastRedis(server.url)
    seen = []
    script = "return tonumber(ARGV[1]) + 1"
    await client.execute("SCRIPT", "FLUSH")
    # Loaded on the way (NOSCRIPT first): the callback still sees only the one successful reply.
    reply = await client.evalsha(script, [], [1], on_reply=lambda r: seen.append(("cb", r)))
    seen.append(("resumed", reply))
    assert seen == [("cb", 2), ("resumed", 2)]
    with pytest.raises(ResponseError):
        await client.execute("INCR", "fr:not-a-number-yet", "extra", on_reply=seen.append)
    assert len(seen) == 2
    await client.aclose()


async def test_reconnects_after_a_restart_and_fails_fast_while_down(server):
    client = FastRedis(server.url)
    assert await client.execute("PING") == b"PONG"
    server.stop()
    with pytest.raises(RedisConnectionError):
        await client.execute("PING")
    server.start()
    assert await client.execute("PING") == b"PONG"
    await client.aclose()


async def test_database_and_password_come_from_the_url(server):
    admin = FastRedis(server.url)
    await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
    try:
        client = FastRedis(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await client.execute("SET", "fr:db3", "here")
        plain = FastRedis(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await plain.execute("GET", "fr:db3") is None
        assert await client.execute("GET", "fr:db3") == b"here"
        wrong = FastRedis(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(ResponseError):
            await wrong.execute("PING")
    finally:
        authed = FastRedis(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        await authed.execute("CONFIG", "SET", "requirepass", "")
        for c in (admin, client, plain, wrong, authed):
            await c.aclose()


async def test_commands_issued_in_one_loop_turn_leave_in_one_write(server):
    """The server counts the read events it handled: fifty commands queued in one turn are one of them."""
    import redis

    observer = redis.Redis.from_url(server.url)
    client = FastRedis(server.url)
    await client.execute("PING")  # connected

    def reads() -> int:
        return observer.info("stats")["total_reads_processed"]

    before = reads()
    results = await asyncio.gather(*(client.execute("INCR", "fr:turn") for _ in range(50)))
    after = reads()
    assert results == list(range(1, 51))
    assert after - before == 2  # our one write, and the observer's own INFO
    await client.aclose()
    observer.close()


async def test_a_command_that_cannot_be_encoded_leaves_the_replies_in_order(server):
    client = FastRedis(server.url)
    await client.execute("SET", "fr:order", "1")
    with pytest.raises(TypeError):
        await client.execute("SET", "fr:order", True)  # never sent: no reply is owed for it
    assert await client.execute("GET", "fr:order") == b"1"
    assert await client.execute("PING") == b"PONG"
    await client.aclose()
