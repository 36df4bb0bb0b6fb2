"""http1.py against real sockets: a scripted HTTP/1.1 server (and a CONNECT proxy) on 127.0.0.1, with TLS where the
API server has it. What must hold: answers framed both ways the API server frames them, a connection reused only
after a whole answer that allows it, and no late or stray answer ever reaching another request."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import kubernetes
import pytest

from mtls_operator import http1, pki, transport

Handler = Callable[[int, bytes, bytes, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """A TCP (or TLS) server on 127.0.0.1 for the length of an `async with`; subclasses serve each connection."""

    tls: ssl.SSLContext | None = None
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Server(Listener):
    """Reads each request (head and Content-Length body) and hands it to `handler` with its number, the head and the
    body; counts the connections it accepted."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await self.handler(len(self.requests), head, body, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def by_length(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


STREAMING = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # the head of an answer sent as it comes


def chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def chunked(*chunks: bytes) -> bytes:
    return b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(map(chunk, chunks)) + b"0\r\n\r\n"


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


def test_answers_framed_by_length_and_in_chunks_come_back_whole_over_one_connection() -> None:
    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        answer = by_length(b'{"n": %d}' % n) if n % 2 else chunked(b'{"n":', b" %d" % n, b"}")
        for i in range(0, len(answer), 7):  # in pieces: the parser must carry state across reads
            writer.write(answer[i:i + 7])
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}/prefix/", None)
            answers = [await client.request("POST" if i == 1 else "GET", f"/api/v1/things?i={i}",
                                            {"Accept": "application/json"}, b'{"a": 1}' if i == 1 else None)
                       for i in (1, 2, 3)]
            await client.close()
            assert answers == [(200, b'{"n": 1}'), (201, b'{"n": 2}'), (200, b'{"n": 3}')]
            assert server.connections == 1
            first = server.requests[0]
            assert first.startswith(b"POST /prefix/api/v1/things?i=1 HTTP/1.1\r\n")
            assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in first
            assert first.endswith(b'Content-Length: 8\r\n\r\n{"a": 1}')
            assert b"Content-Length" not in server.requests[1]  # a GET carries no body

    run(main())


def test_a_connection_is_reused_only_when_the_answer_allows_it() -> None:
    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(by_length(b"{}", "Connection: close\r\n" if n == 1 else ""))
        await writer.drain()
        if n == 1:
            writer.close()

    async def main() -> None:
        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            for _ in range(3):
                assert await client.request("GET", "/", {}) == (200, b"{}")
            await client.close()
            assert server.connections == 2  # the first said close; the second carried the next two

    run(main())


def test_an_answer_cut_short_or_not_http_is_a_connection_error_and_the_connection_is_dropped() -> None:
    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            writer.write(by_length(b'{"long": "answer"}')[:-5])
            await writer.drain()
            writer.close()
        elif n == 2:
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await writer.drain()
        else:
            writer.write(by_length(b'{"ok": true}'))
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            with pytest.raises(http1.ConnectionClosed, match="before the answer was complete"):
                await client.request("GET", "/", {})
            with pytest.raises(http1.ConnectionClosed, match="unparseable"):
                await client.request("GET", "/", {})
            assert await client.request("GET", "/", {}) == (200, b'{"ok": true}')
            await client.close()
            assert server.connections == 3

    run(main())


def test_an_answer_nobody_asked_for_closes_the_connection() -> None:
    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(by_length(b'{"n": %d}' % n) + (by_length(b'{"stray": true}') if n == 1 else b""))
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            assert await client.request("GET", "/", {}) == (200, b'{"n": 1}')
            assert await client.request("GET", "/", {}) == (200, b'{"n": 2}')
            await client.close()
            assert server.connections == 2

    run(main())


def test_a_late_answer_never_reaches_the_next_request() -> None:
    """A request that timed out or was cancelled leaves its connection closed: the answer the server sends late cannot
    be read as the answer to the request after it."""

    async def main() -> None:
        late = asyncio.Event()

        async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
            if n in (1, 2):
                await late.wait()
            writer.write(by_length(b'{"request": %d}' % n))
            await writer.drain()

        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            with pytest.raises(TimeoutError):
                await client.request("GET", "/", {}, timeout=0.2)
            pending = asyncio.ensure_future(client.request("GET", "/", {}))
            while len(server.requests) < 2:  # the server has the second request: now cancel it
                await asyncio.sleep(0.01)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            late.set()
            assert await client.request("GET", "/", {}) == (200, b'{"request": 3}')
            await client.close()
            assert server.connections == 3

    run(main())


def test_interim_answers_are_skipped_and_an_error_answer_ended_by_the_connection_is_still_the_answer() -> None:
    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}")
        elif n == 2:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n<html>upstream down</html>")
            await writer.drain()
            writer.close()
            return
        else:
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            assert await client.request("POST", "/", {}, b"{}") == (409, b"{}")
            assert await client.request("GET", "/", {}) == (502, b"<html>upstream down</html>")
            with pytest.raises(http1.ConnectionClosed, match="unparseable"):  # no longer HTTP: never an answer
                await client.request("GET", "/", {})
            await client.close()

    run(main())


def test_the_last_check_before_sending_runs_once_connected_and_a_refusal_sends_nothing() -> None:
    async def main() -> None:
        async with Server(_ok) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            seen: list[int] = []

            def gate() -> None:
                seen.append(server.connections)
                if len(seen) == 2:
                    raise PermissionError("fenced")

            assert await client.request("POST", "/", {}, b"{}", before_send=gate) == (200, b'{"n": 1}')
            with pytest.raises(PermissionError):
                await client.request("POST", "/", {}, b"{}", before_send=gate)
            assert await client.request("POST", "/", {}, b"{}", before_send=gate) == (200, b'{"n": 2}')
            await client.close()
            assert seen == [1, 1, 1]  # connected before the first check; the refused request kept its connection
            assert len(server.requests) == 2

    run(main())


def test_idle_connections_past_their_age_are_closed_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "IDLE_SECONDS", 0.0)

    async def main() -> None:
        async with Server(_ok) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            for n in (1, 2, 3):
                assert await client.request("GET", "/", {}) == (200, b'{"n": %d}' % n)
            assert len(client._open) == 1  # the two before were closed, not left open
            await client.close()
            assert server.connections == 3

    run(main())


def test_a_connection_cut_during_the_handshake_is_a_connection_error_and_a_closed_client_opens_none() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def main() -> None:
        server = await asyncio.start_server(cut, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = http1.Client(f"https://127.0.0.1:{port}", ssl.create_default_context())
        with pytest.raises(ConnectionError):  # what kube.py sends again for a read
            await client.request("GET", "/", {})
        await client.close()
        with pytest.raises(http1.ConnectionClosed, match="client is closed"):
            await client.request("GET", "/", {})
        server.close()

    run(main())


def test_the_proxy_is_the_official_clients_choice_no_proxy_included() -> None:
    config = kubernetes.client.Configuration(host="https://10.96.0.1:443", proxy="http://proxy.corp:3128",
                                             no_proxy="localhost,10.96.0.0/12")
    assert transport.proxy(config) is None
    config.no_proxy = "localhost"
    assert transport.proxy(config) == "http://proxy.corp:3128"
    config.proxy = "socks5://proxy.corp:1080"
    with pytest.raises(ValueError, match="http:// proxies"):  # at start-up, not at every call
        transport.Session(config, 4, "test")


def test_a_request_on_a_connection_already_closing_fails_at_once_instead_of_waiting_out_its_timeout() -> None:
    async def main() -> None:
        async with Server(_ok) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            assert await client.request("GET", "/", {}) == (200, b'{"n": 1}')
            conn = client._idle[-1]
            assert conn.transport is not None
            conn.transport.close()  # closing: its connection_lost has not run yet
            with pytest.raises(http1.ConnectionClosed, match="before the request was sent"):
                await asyncio.wait_for(conn.exchange(b"GET / HTTP/1.1\r\n\r\n"), 5)
            assert await client.request("GET", "/", {}) == (200, b'{"n": 2}')  # the pool passes it over
            await client.close()

    run(main())


def test_a_header_or_target_that_would_split_the_request_is_refused() -> None:
    async def main() -> None:
        client = http1.Client("http://127.0.0.1:1", None)
        with pytest.raises(ValueError, match="line break"):
            await client.request("GET", "/", {"Authorization": "Bearer x\r\nX-Injected: 1"})
        with pytest.raises(ValueError, match="request target"):
            await client.request("GET", "/a b", {})

    run(main())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context for a certificate naming only api.test (no IP address), and the root's file."""
    now = dt.datetime.now(dt.UTC)
    root_key = pki.generate_key("ECDSA")
    root = pki.self_signed_ca(root_key, "test root", "test", now - dt.timedelta(hours=1), dt.timedelta(days=1))
    key = pki.generate_key("ECDSA")
    leaf = pki.issue_leaf(pki.LeafRequest("spiffe://test/api", ["api.test"], [], server=True, client=False,
                                          duration=dt.timedelta(hours=1)), key.public_key(), root, root_key, now,
                          dt.timedelta(minutes=5))
    d = tmp_path_factory.mktemp("tls")
    (d / "leaf.pem").write_bytes(pki.to_pem(leaf) + pki.key_to_pem(key))
    (d / "root.pem").write_bytes(pki.to_pem(root))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "leaf.pem")
    return server, d / "root.pem"


async def _ok(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(by_length(b'{"n": %d}' % n))
    await writer.drain()


def test_tls_checks_the_server_by_the_name_it_is_told_to_expect(tls: tuple[ssl.SSLContext, Path]) -> None:
    server_context, root = tls

    async def main() -> None:
        async with Server(_ok, server_context) as server:
            url = f"https://127.0.0.1:{server.port}"
            with pytest.raises(ssl.SSLCertVerificationError):  # the certificate does not name 127.0.0.1
                await http1.Client(url, ssl.create_default_context(cafile=root)).request("GET", "/", {})
            client = http1.Client(url, ssl.create_default_context(cafile=root), server_hostname="api.test")
            assert await client.request("GET", "/", {}) == (200, b'{"n": 1}')
            await client.close()

    run(main())


class Proxy(Listener):
    """A CONNECT proxy: the tunnels' first lines are kept; `refuse` answers 407 instead."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.heads: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        if self.refuse:
            page = b"<html>who are you?</html>"
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: %d\r\n\r\n" % len(page) + page)
            writer.close()
            return
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_through_a_proxy_tls_runs_end_to_end_in_a_connect_tunnel(tls: tuple[ssl.SSLContext, Path]) -> None:
    server_context, root = tls

    async def main() -> None:
        async with Server(_ok, server_context) as server, Proxy() as proxy, Proxy(refuse=True) as refusing:
            url = f"https://127.0.0.1:{server.port}"
            client = http1.Client(url, ssl.create_default_context(cafile=root),
                                  proxy=f"http://user:pa%20ss@127.0.0.1:{proxy.port}", server_hostname="api.test")
            assert await client.request("GET", "/", {}) == (200, b'{"n": 1}')
            assert await client.request("GET", "/", {}) == (200, b'{"n": 2}')
            await client.close()
            assert len(proxy.heads) == 1  # one tunnel, kept alive
            assert proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n".encode())
            credentials = base64.b64encode(b"user:pa ss").decode()
            assert f"Proxy-Authorization: Basic {credentials}\r\n".encode() in proxy.heads[0]
            assert b"CONNECT" not in b"".join(server.requests)  # the server saw only the requests, inside TLS
            with pytest.raises(http1.ProxyRefused, match="407"):
                await http1.Client(url, ssl.create_default_context(cafile=root), proxy=f"http://127.0.0.1:"
                                   f"{refusing.port}", server_hostname="api.test").request("GET", "/", {})

    run(main())


def test_addresses_it_cannot_serve_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="server address"):
        http1.Client("ftp://example", None)
    with pytest.raises(ValueError, match="SSL context"):
        http1.Client("https://example", None)
    with pytest.raises(ValueError, match="http:// proxies"):
        http1.Client("http://example", None, proxy="socks5://127.0.0.1:1080")


def test_an_unusable_proxy_stops_the_operator_at_start_up_with_the_reason(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', proxy-url: 'https://127.0.0.1:3128'}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    done = subprocess.run([sys.executable, "-m", "mtls_operator", "run", "--health-port", "0", "--metrics-port", "0"],
                          env={**env, "KUBECONFIG": str(kubeconfig)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("mtls-operator: cannot reach the API server: only http:// proxies "
                                                    "are supported for the API server, not 'https://127.0.0.1:3128'")


def test_a_streamed_answer_reaches_its_reader_as_it_arrives_on_a_connection_outside_the_pool() -> None:
    more = asyncio.Event()

    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if not head.startswith(b"GET /watch"):
            writer.write(by_length(b"{}"))
        else:
            writer.write(STREAMING + chunk(b"first"))
            await writer.drain()
            await more.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            pieces: list[bytes] = []
            statuses: list[int] = []
            first = asyncio.Event()

            def on_body(piece: bytes) -> None:
                pieces.append(piece)
                first.set()

            streaming = asyncio.ensure_future(client.stream("GET", "/watch", {}, on_body, on_status=statuses.append))
            await first.wait()  # before the answer is over
            assert (pieces, statuses) == ([b"first"], [200])
            assert await client.request("GET", "/", {}) == (200, b"{}")  # the stream holds none of the pool's
            more.set()
            assert await streaming == (200, b"")
            assert b"".join(pieces) == b"firstsecond"
            await client.close()
            assert server.connections == 2

    run(main())


class Streams(Server):
    """A Server that notes which request's connection came to an end (the client closed it)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(handler)
        self.paths: dict[asyncio.StreamWriter, bytes] = {}
        self.ended: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await super()._serve(reader, writer)  # until the connection ends
        self.ended.append(self.paths.get(writer, b""))


def test_a_stream_ends_on_an_error_answer_its_readers_failure_silence_or_a_cancel_and_its_connection_with_it() -> None:
    async def handler(n: int, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        path = server.paths[writer] = head.split(b" ")[1]
        if path == b"/gone":
            writer.write(b'HTTP/1.1 410 Gone\r\nContent-Length: 13\r\n\r\n{"code": 410}')
        elif path == b"/proxy":  # an error page whose end is the connection's
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<html>no</html>")
            await writer.drain()
            writer.close()
        else:
            writer.write(STREAMING + chunk(b"one"))
        await writer.drain()

    def refuse(piece: bytes) -> None:
        raise ValueError(f"cannot read {piece!r}")

    server = Streams(handler)

    async def main() -> None:
        async with server:
            client = http1.Client(f"http://127.0.0.1:{server.port}", None)
            pieces: list[bytes] = []
            assert await client.stream("GET", "/gone", {}, pieces.append) == (410, b'{"code": 410}')
            assert pieces == []  # an error answer's body is the caller's to report, not a stream's
            with pytest.raises(ValueError, match="cannot read b'one'"):
                await client.stream("GET", "/refused", {}, refuse)
            with pytest.raises(TimeoutError):
                await client.stream("GET", "/quiet", {}, pieces.append, idle_timeout=0.3)
            streaming = asyncio.ensure_future(client.stream("GET", "/cancelled", {}, pieces.append))
            while len(pieces) < 2:  # the quiet stream's piece, then the cancelled one's
                await asyncio.sleep(0.01)
            streaming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await streaming
            assert await client.stream("GET", "/proxy", {}, pieces.append) == (502, b"<html>no</html>")
            streaming = asyncio.ensure_future(client.stream("GET", "/closed", {}, pieces.append))
            while len(pieces) < 3:
                await asyncio.sleep(0.01)
            await client.close()
            with pytest.raises(http1.ConnectionClosed, match="client is closed"):  # not a whole answer
                await streaming
            while len(server.ended) < 6:  # each stream's connection went with it
                await asyncio.sleep(0.01)
            assert sorted(server.ended) == [b"/cancelled", b"/closed", b"/gone", b"/proxy", b"/quiet", b"/refused"]

    run(main())
