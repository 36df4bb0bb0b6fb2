"""Leader election on a coordination.k8s.io Lease, so that however many replicas run, only one issues.

Two active operators would race on every Secret and double every write. A standby replica waits until the Lease is free
or expired; the leader renews it and, if it cannot renew within the deadline (partitioned from the API server, stuck),
stops acting before anyone else may take over. Expiry is judged the way client-go does it: by how long *this* process
has seen the record unchanged, never by comparing another machine's timestamps with our clock.

Renewal runs on a thread of its own with blocking, time-bounded requests: it needs neither the event loop (busy with
thousands of watch events, or blocked by a slow handler) nor the API worker pool (full of Secret writes). Every
success extends the write fence (fence.py); when renewing fails past the deadline or another replica holds the
lease, the fence closes first and the owner is told second, so no write can leave in between. Losing the lease is
not the end of the process: the owner steps down and campaigns again (__main__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from . import fence as fence_mod
from .kube import LEASE_REQUEST_TIMEOUT, Conflict, Kube, NotFound

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
                 timing: LeaseTiming | None = None, fence: fence_mod.Fence | None = None,
                 clock: Callable[[], float] = fence_mod.now) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.timing = timing or LeaseTiming()
        self.fence = fence or fence_mod.Fence(clock)
        self.clock = clock
        self._observed: tuple[Any, float] | None = None  # (the record as last seen, when it was first seen so)
        self.is_leader = False
        # For readiness: whether a loop (acquire or keep) runs, and when the API server last answered it.
        self.looping = False
        self.last_contact: float | None = None  # self.clock()
        self._keeper: threading.Thread | None = None
        self._keep_stop = threading.Event()

    @property
    def request_timeout(self) -> float:
        """A hung request must not outlast the renew deadline."""
        return min(LEASE_REQUEST_TIMEOUT, self.timing.renew_deadline / 2)

    def _expired(self, spec: dict[str, Any]) -> bool:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self.clock()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        duration = spec.get("leaseDurationSeconds") or self.timing.duration
        return now - self._observed[1] > duration

    def try_acquire_or_renew(self) -> bool:
        """One attempt, blocking. On success the fence is extended from the moment the attempt *started*: the record
        we write cannot be seen by anyone before that."""
        sent = self.clock()
        timeout = self.request_timeout
        now = dt.datetime.now(dt.UTC)
        mine = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timing.duration),
                "renewTime": _micro_time(now)}
        try:
            lease = self.kube.get_lease(self.namespace, self.name, timeout=timeout)
        except NotFound:
            try:
                self.kube.create_lease(self.namespace, self.name,
                                       {**mine, "acquireTime": _micro_time(now), "leaseTransitions": 0},
                                       timeout=timeout)
            except Conflict:
                return False
            self.fence.grant(sent, self.timing.renew_deadline)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not self._expired(spec):
            return False
        if holder != self.identity:
            mine["acquireTime"] = _micro_time(now)
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = {**spec, **mine}
        try:
            self.kube.replace_lease(lease, timeout=timeout)
        except Conflict:
            return False
        self.fence.grant(sent, self.timing.renew_deadline)
        return True

    async def acquire(self, give_up: asyncio.Event | None = None) -> bool:
        """Returns True once this process holds the lease, or False when `give_up` is set first (a shutdown while
        standing by). Attempts run on a thread: the event loop keeps answering probes."""
        waiting_logged = False
        self.looping = True
        try:
            while give_up is None or not give_up.is_set():
                try:
                    acquired = await asyncio.to_thread(self.try_acquire_or_renew)
                    self.last_contact = self.clock()
                    if acquired:
                        self.is_leader = True
                        log.info("acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                        return True
                    if not waiting_logged:
                        log.info("standing by: lease %s/%s is held by another replica", self.namespace, self.name)
                        waiting_logged = True
                except Exception as e:  # API or network trouble: keep standing by
                    log.warning("could not check lease %s/%s: %s", self.namespace, self.name, e or type(e).__name__)
                if give_up is None:
                    await asyncio.sleep(self.timing.retry_period)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(give_up.wait(), self.timing.retry_period)
            return False
        finally:
            self.looping = False

    def start_keeping(self, on_lost: Callable[[str], None]) -> None:
        """Renews on a thread of its own until stop_keeping(). Calls on_lost(reason) from that thread, once, after
        closing the fence: when another replica holds the lease, or when no renewal has succeeded within the
        deadline (the fence ran out) — before the lease can expire for the others."""
        self._keep_stop = threading.Event()
        self.looping = True
        self._keeper = threading.Thread(target=self._keep, args=(on_lost, self._keep_stop), name="lease-renewal",
                                        daemon=True)
        self._keeper.start()

    def stop_keeping(self) -> None:
        self._keep_stop.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=self.request_timeout + 1)
        self._keeper = None
        self.looping = False

    def _keep(self, on_lost: Callable[[str], None], stop: threading.Event) -> None:
        try:
            while not stop.wait(self.timing.retry_period):
                if not self.fence.is_open():
                    # Stalled past the deadline (a paused process, a starved thread): whatever the next renewal
                    # says, work from before the gap is not to be trusted; step down and start over.
                    reason = f"not renewed for {self.timing.renew_deadline:.0f}s"
                else:
                    try:
                        if self.try_acquire_or_renew():
                            self.last_contact = self.clock()
                            continue
                        reason = "another replica holds it"
                    except Exception as e:  # API, network or timeout: retry until the fence runs out
                        log.warning("could not renew lease %s/%s: %s", self.namespace, self.name,
                                    e or type(e).__name__)
                        continue
                if stop.is_set():
                    return
                self.fence.close()
                self.is_leader = False
                log.error("lost lease %s/%s (%s): stepping down, writes are fenced off", self.namespace, self.name,
                          reason)
                on_lost(reason)
                return
        finally:
            self.looping = False

    def release(self) -> None:
        """Hands the lease back on a clean exit, so a successor does not wait for it to expire. Blocking and bounded
        (an API server that is down cannot hold the exit up for long)."""
        self.fence.close()
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = self.kube.get_lease(self.namespace, self.name, timeout=self.request_timeout)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.kube.replace_lease(lease, timeout=self.request_timeout)
                log.info("released lease %s/%s", self.namespace, self.name)
        except Exception as e:  # the API server may be down: the lease then expires as usual
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, e or type(e).__name__)
