"""The event loop's connection to the API server: a pool of HTTP/1.1 connections (http1.py) set up from the same
`kubernetes.client.Configuration` as every other call (server, TLS and its server name, client certificate, proxy,
bearer token and its refresh), and the bound on calls in flight.

Why not the official client here: it is synchronous, so each call was a hand-off to a thread pool and back, and its
request path (serialization of models, urllib3, http.client) runs in Python under a GIL the event loop also needs.
Measured against the same API server with 32 calls in flight, a write cost 1.1 ms of the operator's CPU that way, 0.5
ms on aiohttp; with 8 in flight, an Event POST costs 0.3 ms on aiohttp and 0.15-0.18 ms over http1.py (bench/RESULTS.md,
issue 12's seventh sitting). The blocking client stays where blocking is the point: the Lease's renewals, on a
thread of their own (kube.py). The watches are streamed answers over http1.py, each on a connection of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping

import kubernetes
import kubernetes.client.rest

from . import http1


def ssl_context(config: kubernetes.client.Configuration) -> ssl.SSLContext | None:
    """What the official client's urllib3 pool would verify and present, as an SSLContext (None for plain http)."""
    if not config.host.startswith("https"):
        return None
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


def proxy(config: kubernetes.client.Configuration) -> str | None:
    """The proxy the official client's own calls take to this server (the kubeconfig's `proxy-url`; from client 37
    on, else the environment's proxy for the server's scheme), or None where NO_PROXY exempts the server: both paths
    must reach the API server the same way."""
    if config.proxy and not kubernetes.client.rest.should_bypass_proxies(config.host, config.no_proxy or ""):
        return config.proxy
    return None


class Session:
    """The connections and the bound on calls in flight, made in the running loop on first use (connections belong to
    the loop that opened them). At most `limit` calls are in flight, each on a connection of its own: a call that
    holds a slot never queues for a connection afterwards. A server address or proxy the client cannot use is refused
    here, at start-up."""

    def __init__(self, config: kubernetes.client.Configuration, limit: int, user_agent: str) -> None:
        self.config, self.limit = config, limit
        self._user_agent = user_agent
        self._client: http1.Client | None = None
        self._slots: Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_client()  # only for its checks, at start-up: the one used is made in the loop that uses it (open)

    def _new_client(self) -> http1.Client:
        return http1.Client(self.config.host, ssl_context(self.config), proxy(self.config),
                            getattr(self.config, "tls_server_name", None) or None,
                            getattr(self.config, "proxy_headers", None) or None)

    def open(self) -> tuple[http1.Client, Slots]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = self._new_client()
            self._slots = Slots(self.limit)
            self._loop = loop
        assert self._slots is not None
        return self._client, self._slots

    def headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {"User-Agent": self._user_agent, **auth_headers(self.config), **extra}

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = None
