"""HTTP/1.1 keep-alive connections to one server over asyncio, answers parsed by httptools (llhttp, the parser uvicorn
runs on): the event loop's path for every API call the operator makes (transport.py).

Why not aiohttp's client, which this replaced: per call it builds a request and a response object, a cookie filter,
header multidicts, a timer and two tasks, about 0.3 ms of the operator's CPU for one small write against the same API
server where this path spends 0.16-0.18 ms (bench/RESULTS.md, issue 12). Every identity costs three writes, so that
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
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import httptools

IDLE_SECONDS = 15.0  # an idle connection older than this is closed, not reused: well inside servers' idle timeouts


class Unsupported(ValueError):
    """A server address or proxy this client cannot use: a configuration to fix, said once at start-up."""


class ConnectionClosed(ConnectionError):
    """The connection ended (or the answer could not be parsed) before a whole answer arrived."""


class ConnectFailed(ConnectionError):
    """No connection could be made (refused, unreachable, name not resolved, TLS cut off): nothing was sent. A refused
    server certificate is not this: it stays an ssl.SSLCertVerificationError, which trying again cannot mend."""


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
        self._status = 0  # of the answer whose headers are in
        self._chunks: list[bytes] = []

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection can no longer be trusted to frame answers
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._fail(ConnectionClosed(f"unparseable answer: {e!r}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._status >= 400:
            # An error answer whose end is the connection's (a proxy's 502 with no length, say): what it says is
            # still the answer, and not a reason to send the request again.
            self._finish(self._status)
        self._fail(ConnectionClosed(f"connection closed before the answer was complete: {exc or 'end of stream'}"))

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            raise ConnectionClosed("an answer nobody asked for")  # feed_data raises it on: the connection is closed

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        status, self._status = self._status, 0
        if 100 <= status < 200:
            # Interim (100 Continue, 103 Early Hints): the answer follows. 101 means the connection is no longer
            # HTTP: it stops here (HttpParserUpgrade), unanswered.
            self._chunks = []
            return
        self.reusable = self._parser.should_keep_alive()
        self._finish(status)

    # ----

    def _finish(self, status: int) -> None:
        body, self._chunks, self._status = b"".join(self._chunks), [], 0
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((status, body))

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if not self.usable:  # asyncio drops a write to a closing transport without a word: the wait would be in vain
            raise ConnectionClosed("connection closed before the request was sent")
        assert self.transport is not None
        self.reusable = False
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # nothing of ours is waiting to be sent that matters more than closing now


class _Stream(asyncio.Protocol):
    """One streamed answer on a connection of its own (a watch): the body goes to `on_body` as it arrives, called
    inline from the loop's read, with no task woken and no queue in between. What on_body raises ends the stream with
    that error. An error answer's body is kept instead (up to 64 KiB), for the caller to report."""

    def __init__(self, on_body: Callable[[bytes], None], on_status: Callable[[int], None] | None) -> None:
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.error_body = b""
        self.last_data = time.monotonic()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read here when nobody is left to read it (the caller timed out or was cancelled while connecting).
        self.ended.add_done_callback(lambda ended: ended.cancelled() or ended.exception())
        self._on_body, self._on_status = on_body, on_status
        self._parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        if self.ended.done():
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            cause = e.__context__ if isinstance(e, httptools.HttpParserCallbackError) and e.__context__ else e
            self.end(cause if isinstance(e, httptools.HttpParserCallbackError)
                     else ConnectionClosed(f"unparseable answer: {e!r}"))
        except Exception as e:  # what on_body raised
            self.end(e)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status >= 400:  # an error answer ended by the close (a proxy's, say) is still that answer
            self.end(None)
        self.end(ConnectionClosed(f"connection closed before the answer was complete: {exc or 'end of stream'}"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status >= 200 and self._on_status is not None:
            self._on_status(self.status)

    def on_body(self, body: bytes) -> None:
        if 200 <= self.status < 300:
            self._on_body(body)
        elif len(self.error_body) < 65536:
            self.error_body += body[:65536 - len(self.error_body)]

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            self.status = 0  # interim: the answer follows
            return
        self.end(None)

    def end(self, error: BaseException | None) -> None:
        """The stream is over: the whole answer is in (None), or it failed. The connection is not reused."""
        if not self.ended.done():
            if error is None:
                self.ended.set_result(None)
            else:
                self.ended.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Ended by its caller (done or cancelled), or by the client's closing: never a whole answer."""
        self.end(ConnectionClosed("the client is closed"))


class _ProxyAnswer(asyncio.Protocol):
    """The proxy's answer to CONNECT, up to the blank line; the tunnel's bytes after it belong to the connection."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._data = b""

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self._data += data
        if b"\r\n\r\n" in self._data:
            head, _, rest = self._data.partition(b"\r\n\r\n")
            status_line = head.partition(b"\r\n")[0]
            code = status_line.split(b" ", 2)[1:2]
            if not status_line.startswith(b"HTTP/1.") or not code or not code[0].startswith(b"2"):
                self.head.set_exception(ProxyRefused(
                    f"proxy: CONNECT answered {status_line[:200].decode(errors='replace')!r}"))
            elif rest:  # in a tunnel the server cannot speak before we do
                self.head.set_exception(ProxyRefused("proxy: bytes after its answer to CONNECT"))
            else:
                self.head.set_result(head)
        elif len(self._data) > 65536:
            self.head.set_exception(ProxyRefused("proxy: an answer to CONNECT over 64 KiB"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ProxyRefused(f"proxy: closed before answering CONNECT: {exc or 'end of stream'}"))


_P = TypeVar("_P", _Connection, _Stream)


class Client:
    """Connections to the server at `url` (its path, if any, prefixes every request: an API proxy's), over TLS with
    `ssl_context` for https, through an http:// `proxy` by CONNECT when given (`proxy_headers` sent with the CONNECT).
    Callers bound how many requests are in flight (transport.Slots); the pool holds at most that many connections.
    Unsupported at once for what it cannot do, rather than at every call."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, proxy: str | None = None,
                 server_hostname: str | None = None, proxy_headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unsupported(f"not an http(s) server address: {url!r}")
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._host_header = f"Host: {parts.netloc.rpartition('@')[2]}\r\n"
        self._ssl = ssl_context if parts.scheme == "https" else None
        if parts.scheme == "https" and self._ssl is None:
            raise Unsupported("an https server needs an SSL context")
        self._server_hostname = (server_hostname or self.host) if self._ssl is not None else None
        self._proxy = urlsplit(proxy) if proxy else None
        if self._proxy is not None and (self._proxy.scheme != "http" or not self._proxy.hostname):
            raise Unsupported(f"only http:// proxies are supported for the API server, not {proxy!r}")
        self._proxy_headers = dict(proxy_headers or {})
        self._idle: list[_Connection] = []  # oldest first
        self._open: set[_Connection | _Stream] = set()
        self._closed = False

    async def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None,
                      timeout: float = 30, before_send: Callable[[], None] | None = None) -> tuple[int, bytes]:
        """The status and body of one answer. `target` is the path and query, already encoded. `before_send` is
        called once a connection is in hand, with nothing awaited between it and the request's bytes leaving (a write
        fence belongs there: connecting can take seconds); what it raises stops the request. Raises OSError
        (ConnectionError; ssl.SSLError for a refused certificate) for the connection's trouble and TimeoutError past
        `timeout` seconds (connecting included)."""
        request = self._head(method, target, headers, body)
        async with asyncio.timeout(timeout):
            conn = self._take_idle() or await self._connect(_Connection)
            if before_send is not None:
                try:
                    before_send()
                except BaseException:
                    self._put_back(conn)  # nothing was sent on it
                    raise
            try:
                status, data = await conn.exchange(request)
            except BaseException:
                self._discard(conn)
                raise
        if conn.reusable:
            self._put_back(conn)
        else:
            self._discard(conn)
        return status, data

    def _head(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        """The request's bytes."""
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
        return "".join(lines).encode("latin-1") + (body or b"")

    async def stream(self, method: str, target: str, headers: Mapping[str, str], on_body: Callable[[bytes], None], *,
                     on_status: Callable[[int], None] | None = None, connect_timeout: float = 10,
                     idle_timeout: float = 330) -> tuple[int, bytes]:
        """One answer whose body is handed to `on_body` piece by piece as it arrives (a watch), on a connection of its
        own that is closed after it: a stream holds its connection for minutes and must not take one of the pool's.
        `on_status` is told the status as soon as the answer's head is in (a watch is up before its first event).
        Returns when the answer is over: (status, b"") for a success, (status, its body) for an error answer. Raises
        OSError (ConnectionError) for the connection's trouble, TimeoutError when connecting takes over
        `connect_timeout` or no byte arrives for `idle_timeout` seconds, and whatever on_body raises."""
        request = self._head(method, target, headers, None)
        async with asyncio.timeout(connect_timeout):
            answer = await self._connect(lambda: _Stream(on_body, on_status))
        try:
            assert answer.transport is not None
            answer.last_data = time.monotonic()
            answer.transport.write(request)
            while True:
                # One timer per look (every 30 s at most), not one per piece: a watch may bring thousands a second.
                quiet = time.monotonic() - answer.last_data
                if quiet >= idle_timeout:
                    raise TimeoutError(f"no data for {idle_timeout:.0f} s")
                done, _ = await asyncio.wait((answer.ended,), timeout=min(idle_timeout - quiet, 30.0))
                if done:
                    break
            answer.ended.result()
            return answer.status, answer.error_body
        finally:
            self._discard(answer)

    def _put_back(self, conn: _Connection) -> None:
        if conn.usable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _take_idle(self) -> _Connection | None:
        """The most recently used open connection: the one least likely to have been closed by the server. The oldest
        idle ones, past IDLE_SECONDS, are closed on the way."""
        now = time.monotonic()
        while self._idle and now - self._idle[0].idle_since >= IDLE_SECONDS:
            self._discard(self._idle.pop(0))
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            self._discard(conn)
        return None

    async def _connect(self, protocol: Callable[[], _P]) -> _P:
        if self._closed:
            raise ConnectionClosed("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            if self._proxy is None:
                _, conn = await loop.create_connection(protocol, self.host, self.port, ssl=self._ssl,
                                                       server_hostname=self._server_hostname)
            else:
                conn = await self._tunnel(protocol)
        except (ConnectionError, ssl.SSLCertVerificationError):
            raise
        except OSError as e:  # not resolved, unreachable, TLS cut short: as much a failure to connect as a refusal
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {e}") from e
        if self._closed:  # closed while connecting
            self._discard(conn)
            raise ConnectionClosed("the client is closed")
        self._open.add(conn)
        return conn

    async def _tunnel(self, protocol: Callable[[], _P]) -> _P:
        """A connection through the proxy: CONNECT host:port, then TLS (if any) end to end with the server."""
        assert self._proxy is not None and self._proxy.hostname
        loop = asyncio.get_running_loop()
        raw, handshake = await loop.create_connection(_ProxyAnswer, self._proxy.hostname, self._proxy.port or 80)
        try:
            authority = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            extra = dict(self._proxy_headers)
            if self._proxy.username is not None:
                pair = f"{unquote(self._proxy.username)}:{unquote(self._proxy.password or '')}"
                extra.setdefault("Proxy-Authorization", f"Basic {base64.b64encode(pair.encode()).decode()}")
            lines = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
            raw.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{lines}\r\n".encode("latin-1"))
            await handshake.head
            conn = protocol()
            if raw.is_closing():  # the proxy hung up right after answering
                raise ProxyRefused("proxy: closed the tunnel as it opened it")
            if self._ssl is None:
                raw.set_protocol(conn)
                conn.connection_made(raw)
            else:
                conn.connection_made(await loop.start_tls(raw, conn, self._ssl, server_hostname=self._server_hostname))
            return conn
        except BaseException:
            raw.abort()
            raise

    def _discard(self, conn: _Connection | _Stream) -> None:
        conn.close()
        self._open.discard(conn)

    async def close(self) -> None:
        """Closes every connection, in use or idle; the client opens no more."""
        self._closed = True
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' connection_lost runs in this loop turn
