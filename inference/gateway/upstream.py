"""A lean HTTP/1.1 client for talking to vLLM replicas: keep-alive pools, httptools parsing, no per-chunk timers.

The data plane sends one POST per request and relays the answer, often chunk by chunk; aiohttp's generality
(cookie jars, redirects, middleware hooks, a timer re-armed on every chunk) was a fifth of the gateway's CPU.
This client does only what the relay needs: connect (with a timeout), write a pre-encoded request, parse the
status, headers and body (chunked or sized) with httptools — the parser uvicorn uses — and hand the body over
as it arrives. A stale pooled connection (closed by the replica while idle) is retried once on a new one,
before any byte of the response was seen; nothing else is ever retried here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from urllib.parse import urlsplit

import httptools

_MAX_BUFFERED = 256 * 1024  # pause reading from the replica while this much is waiting for a slow client
_IDLE_KEEPALIVE_S = 4.0  # uvicorn (vLLM's server) closes idle connections after 5 s
_STALE_FAILURE_S = 0.25


class UpstreamError(Exception):
    """The replica could not be reached, or the connection failed mid-response."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Nothing arrived from the replica for the read timeout."""


class Response:
    """One response, consumed once: ``read()`` for the whole body or ``iter_chunks()`` as it arrives."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    # --- fed by the connection ---------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _MAX_BUFFERED:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._done = True
        self._wake()

    # --- consumed by the relay ---------------------------------------------------------------------
    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def iter_chunks(self):
        """Yield what has arrived each time something arrives (several network reads coalesced)."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._size = 0
                self._conn.resume()
                yield data
                continue
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_chunks()]
        return b"".join(parts)

    def release(self) -> None:
        """Hand the connection back for reuse if the response was read to its end, else close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done_with(self, reusable=self._done and self._error is None)

    def close(self) -> None:
        """Abandon the response (the client went away): closing the connection makes vLLM abort the request."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _HostPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self._headers_future: asyncio.Future | None = None
        self._keep_alive = False
        self._paused = False
        self._last_activity = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.closed = False
        self.used = False

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        if self.response is None:
            self.abort()  # bytes nobody asked for: the connection is not trustworthy
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad response from replica: {exc}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._stop_watchdog()
        self._fail(UpstreamError("the replica closed the connection"))
        self._pool.forget(self)

    # --- httptools callbacks -----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.response.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if self._headers_future is not None and not self._headers_future.done():
            self._headers_future.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)

    def on_message_complete(self) -> None:
        self._stop_watchdog()
        self.response._finish()

    # --- driving a request -------------------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if self._headers_future is not None and not self._headers_future.done():
            self._headers_future.set_exception(error)
        if self.response is not None:
            self.response._fail(error)

    def _check_idle(self) -> None:
        """One timer per read timeout, not one per chunk: it re-arms itself while data keeps arriving."""
        remaining = self._last_activity + self._pool.read_timeout - self._loop.time()
        if remaining <= 0:
            self._fail(UpstreamTimeout("the replica sent nothing within the read timeout"))
            self.abort()
        else:
            self._watchdog = self._loop.call_later(remaining, self._check_idle)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def send(self, head: bytes, body: bytes) -> None:
        """Write the request (synchronously: the replica starts on it at once); ``headers`` waits for the answer."""
        self.used = True
        self._parser = httptools.HttpResponseParser(self)
        self.response = Response(self)
        self._headers_future = self._loop.create_future()
        self._last_activity = self._loop.time()
        self._watchdog = self._loop.call_later(self._pool.read_timeout, self._check_idle)
        self.transport.write(head + body if len(body) < 16_384 else head)
        if len(body) >= 16_384:
            self.transport.write(body)

    async def headers(self) -> Response:
        await self._headers_future
        return self.response

    def hang_up(self) -> None:
        """Abandon the request sent on this connection: vLLM aborts a request whose connection closes."""
        future = self._headers_future
        if future is not None:
            if not future.done():
                future.cancel()  # nobody will wait for it
            elif not future.cancelled():
                future.exception()  # a failure nobody will read: mark it seen
        self.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def done_with(self, response: Response, *, reusable: bool) -> None:
        self.response = None
        self._headers_future = None
        self.resume()
        if reusable and self._keep_alive and not self.closed:
            self._pool.give_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._stop_watchdog()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class _HostPool:
    def __init__(self, scheme: str, host: str, port: int, *, connect_timeout: float, read_timeout: float) -> None:
        self.host, self.port = host, port
        self.ssl = ssl.create_default_context() if scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: collections.deque[_Connection] = collections.deque()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            raise UpstreamError(f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return conn

    def take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and now - conn.idle_since < _IDLE_KEEPALIVE_S:
                return conn
            conn.abort()
        return None

    def give_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):  # not idle: in use, or already taken out
            self.idle.remove(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().abort()


class Exchange:
    """One POST to a replica, begun but not yet answered."""

    __slots__ = ("_body", "_conn", "_head", "_pool", "_sent")

    def __init__(self, pool: _HostPool, head: bytes, body: bytes) -> None:
        self._pool, self._head, self._body = pool, head, body
        self._conn: _Connection | None = None
        self._sent = 0.0

    def send_on(self, conn: _Connection) -> None:
        self._conn, self._sent = conn, time.monotonic()
        conn.send(self._head, self._body)

    async def response(self) -> Response:
        """The answer's status and headers. A pooled connection the replica had closed while idle fails at once
        with a reset and is retried once on a new connection; nothing else is retried."""
        conn = self._conn
        if conn is not None:
            try:
                return await conn.headers()
            except UpstreamTimeout:
                raise
            except asyncio.CancelledError:
                conn.hang_up()  # the request may be on the replica already: hanging up makes vLLM abort it
                raise
            except UpstreamError:
                conn.abort()
                # A replica that closed an idle connection answers the next write at once with a reset; a
                # failure later than that may mean it was already generating, and a retry would run it twice.
                if time.monotonic() - self._sent > _STALE_FAILURE_S:
                    raise
        conn = await self._pool.connect()
        self._conn = conn
        try:
            conn.send(self._head, self._body)
            return await conn.headers()
        except BaseException:
            conn.abort()
            raise

    def cancel(self) -> None:
        """Abandon the request, whatever its state: a replica that has it aborts it when the connection closes."""
        if self._conn is not None:
            self._conn.hang_up()


class UpstreamClient:
    """Connection pools per replica, shared by every request of one worker (one event loop)."""

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pools: dict[str, _HostPool] = {}
        self._heads: dict[tuple[str, str], bytes] = {}

    def _pool(self, base_url: str) -> _HostPool:
        pool = self._pools.get(base_url)
        if pool is None:
            parts = urlsplit(base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            pool = _HostPool(parts.scheme, parts.hostname, port, connect_timeout=self._connect_timeout,
                             read_timeout=self._read_timeout)
            self._pools[base_url] = pool
        return pool

    def _head(self, base_url: str, path: str, pool: _HostPool, authorization: str) -> bytes:
        """The request line and fixed headers, encoded once per replica and path."""
        cached = self._heads.get((base_url, path))
        if cached is None:
            host = pool.host if pool.port in (80, 443) else f"{pool.host}:{pool.port}"
            lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                     "Accept: */*", "Connection: keep-alive"]
            if authorization:
                lines.append(f"Authorization: {authorization}")
            cached = ("\r\n".join(lines) + "\r\n").encode("latin-1")
            self._heads[(base_url, path)] = cached
        return cached

    def begin(self, base_url: str, path: str, body: bytes, *, headers: dict[str, str],
              authorization: str = "") -> Exchange:
        """Start a POST: on a pooled connection the request is written before this returns, so the replica works
        on it while the caller does something else; ``Exchange.response()`` then waits for the answer."""
        pool = self._pool(base_url)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = self._head(base_url, path, pool, authorization) + (
            f"{extra}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        )
        exchange = Exchange(pool, head, body)
        conn = pool.take_idle()
        if conn is not None:
            exchange.send_on(conn)
        return exchange

    async def post(self, base_url: str, path: str, body: bytes, *, headers: dict[str, str],
                   authorization: str = "") -> Response:
        """Send a POST and return once the status and headers arrived (the body follows through the
        response). Raises UpstreamError when the replica can't be reached or drops the connection first."""
        return await self.begin(base_url, path, body, headers=headers, authorization=authorization).response()

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
