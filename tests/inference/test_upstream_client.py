"""The data plane's HTTP/1.1 client against real sockets: the simulator, and raw servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from inference.gateway.upstream import UpstreamClient, UpstreamError, UpstreamTimeout
from tests.servers import free_port

CHAT = orjson.dumps({"model": "mistralai/Mistral-7B-Instruct-v0.3", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 8})


@pytest.fixture
def client():
    return UpstreamClient(connect_timeout=1.0, read_timeout=1.0)


async def test_json_and_stream_from_the_simulator_reuse_one_connection(client, simulator):
    response = await client.post(simulator.base_url, "/v1/chat/completions", CHAT, headers={"X-Request-Id": "r1"})
    assert response.status == 200 and (b"content-type", b"application/json") in response.headers
    body = orjson.loads(await response.read())
    assert body["id"] == "chatcmpl-r1" and body["usage"]["completion_tokens"] == 8
    response.release()
    pool = client._pool(simulator.base_url)
    assert len(pool.idle) == 1
    first = pool.idle[0]

    stream = orjson.dumps({**orjson.loads(CHAT), "stream": True})
    response = await client.post(simulator.base_url, "/v1/chat/completions", stream, headers={})
    text = b"".join([chunk async for chunk in response.iter_chunks()])  # chunked transfer, decoded
    assert text.endswith(b"data: [DONE]\n\n") and text.count(b"data: ") == 10  # role, 8 tokens, [DONE]
    response.release()
    assert list(pool.idle) == [first]  # the same keep-alive connection served both
    await client.close()


async def test_unreachable_replica_is_an_upstream_error(client):
    with pytest.raises(UpstreamError, match="cannot connect"):
        await client.post(f"http://127.0.0.1:{free_port()}", "/v1/chat/completions", CHAT, headers={})


@contextlib.asynccontextmanager
async def raw_server(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def _read_request(reader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def drain(response, into: list[bytes]) -> None:
    async for chunk in response.iter_chunks():
        into.append(chunk)


async def test_a_silent_replica_times_out(client):
    async def handler(reader, writer):
        await _read_request(reader)
        await asyncio.sleep(5)  # never answers

    async with raw_server(handler) as url:
        with pytest.raises(UpstreamTimeout):
            await client.post(url, "/v1/chat/completions", CHAT, headers={})


async def test_a_replica_that_stalls_mid_body_times_out(client):
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as url:
        response = await client.post(url, "/v1/chat/completions", CHAT, headers={})
        chunks: list[bytes] = []
        with pytest.raises(UpstreamTimeout):
            await drain(response, chunks)
        assert chunks == [b"hello"]


async def test_a_replica_that_dies_mid_body_is_an_error_after_what_it_sent(client):
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        writer.transport.abort()

    async with raw_server(handler) as url:
        response = await client.post(url, "/v1/chat/completions", CHAT, headers={})
        received: list[bytes] = []
        with pytest.raises(UpstreamError):
            await drain(response, received)
        assert b"".join(received) == b"abc"


async def test_a_pooled_connection_closed_while_idle_is_replaced_transparently(client):
    requests_seen = []

    async def handler(reader, writer):
        body = await _read_request(reader)
        requests_seen.append(body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # the replica hangs up after each answer, though it said nothing about it

    async with raw_server(handler) as url:
        for _ in range(3):
            response = await client.post(url, "/v1/chat/completions", CHAT, headers={})
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.05)
    assert len(requests_seen) == 3  # each request reached the replica exactly once


async def test_large_bodies_and_slow_readers(client):
    big = b"x" * 600_000

    async def handler(reader, writer):
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async with raw_server(handler) as url:
        response = await client.post(url, "/echo", big, headers={})
        received = 0
        async for chunk in response.iter_chunks():
            received += len(chunk)
            await asyncio.sleep(0.001)  # a slow client downstream: reading pauses and resumes
        assert received == len(big)
        response.release()


async def test_closing_a_response_hangs_up_on_the_replica(client):
    hung_up = asyncio.Event()

    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                writer.write(b"1\r\na\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
                if reader.at_eof():
                    break
        hung_up.set()

    async with raw_server(handler) as url:
        response = await client.post(url, "/v1/chat/completions", CHAT, headers={})
        async for _chunk in response.iter_chunks():
            break
        response.close()  # the client went away: vLLM must stop generating
        await asyncio.wait_for(hung_up.wait(), 3)
