"""The health port: /healthz (liveness) and /readyz (readiness, judged in readiness.py).

One small aiohttp server for the whole life of the process, started before leader election: the port never goes dark
between standing by and leading (kopf's own liveness endpoint would only open after its start-up handlers, which at
thousands of identities can outlast a liveness probe's patience).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import readiness
from .config import Settings

log = logging.getLogger(__name__)


class ProcessState:
    """The live objects readiness is read from, filled in by __main__ as the process moves from standby to leading."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.elector: Any = None  # leader.LeaderElection while leader election is on
        self.leading = False
        self.stopping = False
        self.memo: Any = None  # kopf.Memo; memo.reconciler once kopf's start-up handler made it
        self.kopf_ready: Any = None  # asyncio.Event raised by kopf once its start-up handlers are done
        self.insights: Any = None  # kopf's insights: its ready flags say when its resource discovery is done

    def _role(self) -> str:
        if self.stopping:
            return readiness.STOPPING
        if self.leading:
            return readiness.LEADER
        if self.elector is None or self.elector.last_contact is None:
            return readiness.STARTING
        return readiness.STANDBY

    def _unwatched(self, reconciler: Any) -> tuple[str, ...]:
        """Streams that should be watched and are not: kopf's (ServiceAccounts, policies, bundle ConfigMaps) until it
        has discovered which resources and namespaces to watch, and the reconciler's own (MtlsIdentities, their
        Secrets) while one is down (Reconciler.unwatched)."""
        down: tuple[str, ...] = ()
        insights = self.insights
        if insights is not None and not (insights.ready_resources.is_set() and insights.ready_namespaces.is_set()):
            down += ("kopf's watch streams (discovering resources and namespaces)",)
        if reconciler is not None:
            down += reconciler.unwatched()
        return down

    def snapshot(self) -> readiness.Snapshot:
        s = self.settings
        elector = self.elector
        reconciler = getattr(self.memo, "reconciler", None) if self.memo is not None else None
        ca_problem: str | None = "the CA has not been loaded yet"
        if reconciler is not None:
            ca_problem = None if reconciler.ca is not None else (reconciler.ca_error or "no CA")
        return readiness.Snapshot(
            role=self._role(),
            leader_election=s.leader_election,
            lease_looping=bool(elector and elector.looping),
            lease_age=(elector.clock() - elector.last_contact) if elector and elector.last_contact else None,
            lease_held=bool(elector is None or elector.fence.is_open()),
            lease_stale_after=s.lease_duration.total_seconds(),
            ca_problem=ca_problem,
            operator_started=bool(self.kopf_ready is not None and self.kopf_ready.is_set()),
            unwatched=self._unwatched(reconciler),
        )


class HealthServer:
    def __init__(self, port: int, snapshot: Callable[[], readiness.Snapshot], host: str = "0.0.0.0") -> None:
        self.port, self.host, self.snapshot = port, host, snapshot
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        # Liveness: the event loop answers. Readiness problems (a broken CA, a lost API server) are not cured by a
        # restart, so they must not fail this probe.
        try:
            role = self.snapshot().role
        except Exception:  # a half-built state must not turn into a restart
            role = "unknown"
        return web.json_response({"alive": True, "role": role})

    async def _readyz(self, request: web.Request) -> web.Response:
        verdict = readiness.assess(self.snapshot())
        return web.json_response(verdict.body(), status=verdict.http_status)

    async def start(self) -> None:
        if not self.port:
            return
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.debug("serving /healthz and /readyz on port %d", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
