"""The event loop's HTTP connection to the API server: one aiohttp session, set up from the same
`kubernetes.client.Configuration` as every other call (server, TLS, client certificate, bearer token and its refresh).

Why not the official client here: it is synchronous, so each call was a hand-off to a thread pool and back, and its
request path (serialization of models, urllib3, http.client) runs in Python under a GIL the event loop also needs.
Measured against the same API server with 32 calls in flight, a write cost 1.1 ms of the operator's CPU that way and
0.5 ms on aiohttp (kopf's own HTTP client, already loaded). The blocking client stays where blocking is the point:
the Lease's renewals and the watches on threads of their own (kube.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
import kubernetes


def ssl_context(config: kubernetes.client.Configuration) -> ssl.SSLContext | bool:
    """What the official client's urllib3 pool would verify and present, as an SSLContext (False for plain http)."""
    if not config.host.startswith("https"):
        return False
    context = ssl.create_default_context(cafile=config.ssl_ca_cert or None,
                                         cadata=getattr(config, "ca_cert_data", None) or None)
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif config.assert_hostname is False:
        context.check_hostname = False
    if config.cert_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def auth_headers(config: kubernetes.client.Configuration) -> dict[str, str]:
    """The credentials' headers, asked for at each call: the Configuration refreshes a rotated service-account token
    (or a kubeconfig's exec credential) itself, as it does for the official client."""
    out = {}
    for auth in config.auth_settings().values():
        if auth.get("in") == "header" and auth.get("value"):
            out[auth["key"]] = auth["value"]
    return out


class Slots:
    """The bound on calls in flight, in two priorities. A freed slot goes to a waiting call, and to a waiting low one
    (an Event, events.py) only when no other waits; a low call also never takes a free slot ahead of a waiting one. So
    in a backlog the writes that make identities Ready go first, and the Events fill the gaps."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiting: tuple[collections.deque[asyncio.Future[None]], ...] = (collections.deque(), collections.deque())

    @contextlib.asynccontextmanager
    async def take(self, low: bool = False) -> AsyncIterator[None]:
        await self._acquire(low)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, low: bool) -> None:
        if self.free > 0 and not self._waiting[0] and not (low and self._waiting[1]):
            self.free -= 1
            return
        line = self._waiting[1 if low else 0]
        turn = asyncio.get_running_loop().create_future()
        line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot was handed over as the wait was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    line.remove(turn)
            raise

    def _release(self) -> None:
        for line in self._waiting:
            while line:
                turn = line.popleft()
                if not turn.done():
                    turn.set_result(None)  # handed over: `free` is unchanged
                    return
        self.free += 1


class Session:
    """One aiohttp session and the bound on calls in flight, made in the running loop on first use (aiohttp ties a
    session to its loop). At most `limit` calls are in flight, and the connection pool has as many connections: a
    call that holds a slot never queues for a connection afterwards, so the moment it is let through (kube.py's
    write fence) is the moment it is sent."""

    def __init__(self, config: kubernetes.client.Configuration, limit: int, user_agent: str) -> None:
        self.config, self.limit = config, limit
        self._headers = {"User-Agent": user_agent}
        self._session: aiohttp.ClientSession | None = None
        self._slots: Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> tuple[aiohttp.ClientSession, Slots]:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self.limit, ssl=ssl_context(self.config))
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
            self._slots = Slots(self.limit)
            self._loop = loop
        assert self._slots is not None
        return self._session, self._slots

    def url(self, path: str) -> str:
        """The server's address may carry a path of its own (an API proxy's), so paths are appended, not joined."""
        return self.config.host.rstrip("/") + path

    @property
    def proxy(self) -> str | None:
        return self.config.proxy or None

    def headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {**auth_headers(self.config), **extra}

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
