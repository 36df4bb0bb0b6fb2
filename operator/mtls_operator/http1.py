"""HTTP/1.1 keep-alive connections to one server over asyncio, answers parsed by httptools (llhttp, the parser uvicorn
runs on): the event loop's path for every API call the operator makes (transport.py).

Why not aiohttp's client, which this replaced: per call it builds a request and a response object, a cookie filter,
header multidicts, a timer and two tasks, about 0.3 ms of the operator's CPU for one small write against the same API
server where this path spends 0.15 ms (bench/RESULTS.md, issue 12). Every identity costs three writes, so that
difference is a fifth of the CPU per identity. What this does not do, because the API server never needs it: HTTP/2,
compression (no Accept-Encoding is sent), redirects, cookies, streamed bodies, `Expect: 100-continue`.

One request at a time on a connection; a connection goes back to the pool only after a whole answer that lets it stay
open, and any failure, timeout or cancellation part-way closes it, so an answer can never reach the wrong request.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import httptools

IDLE_SECONDS = 15.0  # an idle connection older than this is closed, not reused: well inside servers' idle timeouts


class ConnectionClosed(ConnectionError):
    """The connection ended (or the answer could not be parsed) before a whole answer arrived."""


class ProxyRefused(ConnectionError):
    """The proxy did not open a tunnel to the server."""


class _Connection(asyncio.Protocol):
    """One connection's bytes in and out, and the answer being parsed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._chunks: list[bytes] = []

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection can no longer be trusted to frame answers
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionClosed(f"unparseable answer: {e}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionClosed(f"connection closed before the answer was complete: {exc or 'end of stream'}"))

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            raise ConnectionClosed("an answer nobody asked for")  # feed_data raises it on: the connection is closed

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        body, self._chunks = b"".join(self._chunks), []
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), body))

    # ----

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.reusable = False
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # nothing of ours is waiting to be sent that matters more than closing now


class _ProxyAnswer(asyncio.Protocol):
    """The proxy's answer to CONNECT, up to the blank line; the tunnel's bytes after it belong to the connection."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._data = b""

    def data_received(self, data: bytes) -> None:
        self._data += data
        if b"\r\n\r\n" in self._data and not self.head.done():
            head, _, rest = self._data.partition(b"\r\n\r\n")
            if rest:  # the server cannot speak before we do
                self.head.set_exception(ProxyRefused("proxy: bytes after its answer to CONNECT"))
            else:
                self.head.set_result(head)
        elif len(self._data) > 65536 and not self.head.done():
            self.head.set_exception(ProxyRefused("proxy: an answer to CONNECT over 64 KiB"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ProxyRefused(f"proxy: closed before answering CONNECT: {exc or 'end of stream'}"))


class Client:
    """Connections to the server at `url` (its path, if any, prefixes every request: an API proxy's), over TLS with
    `ssl_context` for https, through an http:// `proxy` by CONNECT when given. Callers bound how many requests are in
    flight (transport.Slots); the pool holds at most that many connections."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, proxy: str | None = None,
                 server_hostname: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server address: {url!r}")
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._host_header = f"Host: {parts.netloc.rpartition('@')[2]}\r\n"
        self._ssl = ssl_context if parts.scheme == "https" else None
        if parts.scheme == "https" and self._ssl is None:
            raise ValueError("an https server needs an SSL context")
        self._server_hostname = (server_hostname or self.host) if self._ssl is not None else None
        self._proxy = urlsplit(proxy) if proxy else None
        if self._proxy is not None and (self._proxy.scheme != "http" or not self._proxy.hostname):
            raise ValueError(f"only http:// proxies are supported, not {proxy!r}")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None,
                      timeout: float = 30) -> tuple[int, bytes]:
        """The status and body of one answer. `target` is the path and query, already encoded. Raises OSError
        (ConnectionError, ssl.SSLError) for the connection's trouble and TimeoutError past `timeout` seconds (connecting
        included)."""
        if not target.startswith("/") or any(c in target for c in " \r\n"):
            raise ValueError(f"not a request target: {target!r}")
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\n", self._host_header]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        request = "".join(lines).encode("latin-1") + (body or b"")
        async with asyncio.timeout(timeout):
            conn = self._take_idle() or await self._connect()
            try:
                status, data = await conn.exchange(request)
            except BaseException:
                self._discard(conn)
                raise
        if conn.reusable and not conn.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)
        return status, data

    def _take_idle(self) -> _Connection | None:
        """The most recently used open connection: the one least likely to have been closed by the server."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            self._discard(conn)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._proxy is None:
            _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl,
                                                   server_hostname=self._server_hostname)
        else:
            conn = await self._tunnel()
        self._open.add(conn)
        return conn

    async def _tunnel(self) -> _Connection:
        """A connection through the proxy: CONNECT host:port, then TLS (if any) end to end with the server."""
        assert self._proxy is not None and self._proxy.hostname
        loop = asyncio.get_running_loop()
        raw, handshake = await loop.create_connection(_ProxyAnswer, self._proxy.hostname, self._proxy.port or 80)
        try:
            authority = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            auth = ""
            if self._proxy.username is not None:
                pair = f"{unquote(self._proxy.username)}:{unquote(self._proxy.password or '')}"
                auth = f"Proxy-Authorization: Basic {base64.b64encode(pair.encode()).decode()}\r\n"
            raw.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode())
            status_line = (await handshake.head).partition(b"\r\n")[0]
            if status_line.split(b" ", 2)[1:2] != [b"200"] or not status_line.startswith(b"HTTP/1."):
                raise ProxyRefused(f"proxy {self._proxy.hostname}: CONNECT answered "
                                   f"{status_line.decode(errors='replace')!r}")
            conn = _Connection()
            if self._ssl is None:
                raw.set_protocol(conn)
                conn.connection_made(raw)
            else:
                conn.connection_made(await loop.start_tls(raw, conn, self._ssl, server_hostname=self._server_hostname))
            return conn
        except BaseException:
            raw.abort()
            raise

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' connection_lost runs in this loop turn
