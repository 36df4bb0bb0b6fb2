"""Leader election on a coordination.k8s.io Lease, so that however many replicas run, only one issues.

Two active operators would race on every Secret and double every write. A standby replica waits until the Lease is free
or expired; the leader renews it and, if it cannot renew within the deadline (partitioned from the API server, stuck),
stops acting before anyone else may take over. Expiry is judged the way client-go does it: by how long *this* process
has seen the record unchanged, never by comparing another machine's timestamps with our clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from .kube import ApiError, Conflict, Kube, NotFound

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LeaseTiming:
    duration: float = 15.0  # how long a silent holder keeps the lease
    renew_deadline: float = 10.0  # a leader that has not renewed for this long stops acting
    retry_period: float = 2.0  # how often to try to acquire or renew

    @classmethod
    def for_duration(cls, seconds: float) -> LeaseTiming:
        """client-go's proportions: give up leading at two thirds of the lease, retry five times per lease."""
        return cls(duration=seconds, renew_deadline=seconds * 2 / 3, retry_period=min(2.0, seconds / 5))


def replica_identity() -> str:
    """The name this process goes by, as the Lease holder and as kopf's identity: the pod's name (or the host's), the
    pid and a random suffix, so two processes never share one. Never derived from the passwd database: the image runs as
    a uid that may have no entry there."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _micro_time(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str,
                 timing: LeaseTiming | None = None) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.timing = timing or LeaseTiming()
        self._observed: tuple[Any, float] | None = None  # (the record as last seen, when it was first seen so)
        self.is_leader = False
        # For readiness: whether a loop (acquire or keep) runs, and when the API server last answered it.
        self.looping = False
        self.last_contact: float | None = None  # time.monotonic()

    def _expired(self, spec: dict[str, Any]) -> bool:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        now = time.monotonic()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        duration = spec.get("leaseDurationSeconds") or self.timing.duration
        return now - self._observed[1] > duration

    async def try_acquire_or_renew(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        mine = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timing.duration),
                "renewTime": _micro_time(now)}
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
        except NotFound:
            try:
                await self.kube.create_lease(self.namespace, self.name,
                                             {**mine, "acquireTime": _micro_time(now), "leaseTransitions": 0})
                return True
            except Conflict:
                return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not self._expired(spec):
            return False
        if holder != self.identity:
            mine["acquireTime"] = _micro_time(now)
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = {**spec, **mine}
        try:
            await self.kube.replace_lease(lease)
        except Conflict:
            return False
        return True

    async def acquire(self) -> None:
        """Returns once this process holds the lease."""
        waiting_logged = False
        self.looping = True
        try:
            while True:
                try:
                    acquired = await self.try_acquire_or_renew()
                    self.last_contact = time.monotonic()
                    if acquired:
                        self.is_leader = True
                        log.info("acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                        return
                except Exception as e:  # API or network trouble: keep standing by
                    log.warning("could not check lease %s/%s: %s", self.namespace, self.name, e)
                if not waiting_logged:
                    log.info("standing by: lease %s/%s is held by another replica", self.namespace, self.name)
                    waiting_logged = True
                await asyncio.sleep(self.timing.retry_period)
        finally:
            self.looping = False

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renews until cancelled. Calls on_lost (once) the moment another replica holds the lease, or when renewing
        has failed for longer than the deadline — before the lease can expire for the others."""
        last = time.monotonic()
        self.looping = True
        try:
            while True:
                await asyncio.sleep(self.timing.retry_period)
                remaining = self.timing.renew_deadline - (time.monotonic() - last)
                try:
                    if await asyncio.wait_for(self.try_acquire_or_renew(), max(remaining, 0.1)):
                        last = self.last_contact = time.monotonic()
                        continue
                    reason = "another replica holds it"
                except Exception as e:  # API, network or timeout: retry until the deadline
                    log.warning("could not renew lease %s/%s: %s", self.namespace, self.name, e or type(e).__name__)
                    if time.monotonic() - last <= self.timing.renew_deadline:
                        continue
                    reason = f"not renewed for {self.timing.renew_deadline:.0f}s"
                self.is_leader = False
                log.error("lost lease %s/%s (%s): stopping, so that another replica can take over safely",
                          self.namespace, self.name, reason)
                on_lost()
                return
        finally:
            self.looping = False

    async def release(self) -> None:
        """Hands the lease back on a clean exit, so a successor does not wait for it to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                await self.kube.replace_lease(lease)
        except ApiError as e:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, e)
