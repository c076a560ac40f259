"""A pipelined Redis connection for the data plane's per-request commands (admission and settlement scripts,
usage XADDs).

redis-py's asyncio client pays for generality on every command — a pool checkout, retry and health-check
wrappers, response callbacks — which was a quarter of the gateway's CPU at low concurrency. These commands need
none of it: one connection per worker, replies matched in order (Redis answers a connection's commands in the
order it received them), parsed by hiredis. Commands issued in one event-loop turn leave in one write at its end
(a loopback write costs the sender as much CPU as a small request's own work), so an admission batch, the
settlements that ride with it and the usage XADDs of that turn cost one system call. Errors are redis-py's own
exception classes, so callers handle both clients alike.

Without ``REDIS_URL`` (the embedded default) the same calls go to the in-process stand-in through redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Callable
from typing import Protocol
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class HotCommands(Protocol):
    """What the data plane's per-request code needs of Redis: a command, a script by digest, closing."""

    async def execute(self, *args): ...

    async def evalsha(self, script: str, keys: list, args: list, *, on_reply: Callable | None = None): ...

    async def aclose(self) -> None: ...


def _encode(args: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("booleans are ambiguous in Redis commands")
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: FastRedis) -> None:
        self._owner = owner
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        # (future, on_reply): on_reply, when given, sees a successful reply at once, in this callback, a loop
        # turn before the future's awaiter would.
        self.waiters: collections.deque[tuple[asyncio.Future, Callable | None]] = collections.deque()
        self.closed = False
        self._outbox: list[bytes] = []  # encoded commands waiting for this turn's write

    def write(self, command: bytes) -> None:
        """Queue ``command`` for the write at the end of this loop turn."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(command)

    def _flush(self) -> None:
        commands, self._outbox = self._outbox, []
        if self.transport is not None and not self.closed:
            self.transport.write(commands[0] if len(commands) == 1 else b"".join(commands))

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not self.waiters:
                continue  # a reply nobody waits for (its caller was cancelled): the order is still kept
            waiter, on_reply = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, ResponseError):
                message = str(reply)
                waiter.set_exception(NoScriptError(message) if message.startswith("NOSCRIPT") else reply)
            else:
                if on_reply is not None:
                    on_reply(reply)
                waiter.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.closed = True
        error = RedisConnectionError(f"Redis connection lost: {exc or 'closed by server'}")
        while self.waiters:
            waiter, _on_reply = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self._owner._lost(self)


class FastRedis:
    def __init__(self, url: str, *, connect_timeout: float = 0.5, reply_timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._password = unquote(parts.password) if parts.password else None
        self._username = unquote(parts.username) if parts.username else None
        self._db = int(parts.path.lstrip("/") or 0)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._scripts: dict[str, bytes] = {}

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self._host, self._port), self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from exc
        setup = []
        if self._password:
            setup.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            setup.append(("SELECT", self._db))
        for command in setup:
            await self._send(protocol, command)
        return protocol

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            protocol = await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    def _lost(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def _send(self, protocol: _Protocol, args: tuple, on_reply: Callable | None = None):
        command = _encode(args)  # first: a command that can't be encoded must not leave a waiter behind
        waiter = asyncio.get_running_loop().create_future()
        protocol.waiters.append((waiter, on_reply))
        protocol.write(command)
        try:
            async with asyncio.timeout(self._reply_timeout):
                return await waiter
        except TimeoutError as exc:
            # A reply this late leaves the connection's order in doubt: start afresh.
            protocol.transport.abort()
            raise RedisTimeoutError("Redis did not answer in time") from exc

    async def execute(self, *args, on_reply: Callable | None = None):
        return await self._send(await self._ready(), args, on_reply)

    async def evalsha(self, script: str, keys: list, args: list, *, on_reply: Callable | None = None):
        """Run a Lua script by its digest, loading it first if this Redis doesn't know it (after a restart).

        ``on_reply(reply)`` is called as the reply is read, before this coroutine resumes."""
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest().encode()  # noqa: S324
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args, on_reply=on_reply)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args, on_reply=on_reply)

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class RedisPyCommands:
    """The same two calls on a redis-py client (the embedded default's in-process stand-in)."""

    def __init__(self, client) -> None:
        self._client = client
        self._scripts: dict[str, object] = {}

    async def execute(self, *args):
        return await self._client.execute_command(*args)

    async def evalsha(self, script: str, keys: list, args: list, *, on_reply: Callable | None = None):
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._client.register_script(script)
        reply = await registered(keys=keys, args=args)
        if on_reply is not None:
            on_reply(reply)
        return reply

    async def aclose(self) -> None:
        """The redis-py client belongs to its owner."""
