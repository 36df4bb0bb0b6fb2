"""When a replica counts as ready (the /readyz verdict). Pure: the health server gathers a Snapshot, this judges it.

A leader is ready once it can serve: the issuing CA is loaded, its start-up is over (the caches filled by LIST, the CA
bootstrapped), its watch streams run (kopf's and the reconciler's own, for MtlsIdentities and their Secrets), and
its lease is fresh.

A leader whose write fence has closed (fence.py: no renewal within the deadline) is not ready either, even before it
has stepped down: it writes nothing, and saying "ready" would hide that.

A standby is ready when it is a healthy standby: its lease loop runs and its last look at the Lease succeeded recently.
It must not wait for a CA or watches it will only load on taking over: with the chart's rolling update (maxSurge 1,
maxUnavailable 0) the old leader leaves only after the new pod is Ready, and hands the Lease over as it leaves; a
standby that waited for leadership to be ready would stall every rollout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

STARTING, STANDBY, LEADER, STOPPING = "starting", "standby", "leader", "stopping"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the process knows about itself at one moment."""

    role: str = STARTING
    leader_election: bool = True
    lease_looping: bool = False  # the acquire or renew loop is running
    lease_age: float | None = None  # seconds since the Lease was last read or renewed successfully; None: never
    lease_stale_after: float = 15.0  # older than this, the replica has lost touch with the API server
    lease_held: bool = True  # the write fence is open: the lease was renewed recently enough to act on it
    ca_problem: str | None = "the CA has not been loaded yet"  # None: the issuing CA is loaded and valid
    operator_started: bool = False  # kopf's start-up handlers are done: caches filled, CA bootstrapped
    unwatched: tuple[str, ...] = ()  # watch streams not running (yet, or any more), each with its reason


@dataclasses.dataclass(frozen=True)
class Verdict:
    ready: bool
    role: str
    missing: tuple[str, ...]

    @property
    def http_status(self) -> int:
        return 200 if self.ready else 503

    def body(self) -> dict[str, Any]:
        return {"ready": self.ready, "role": self.role, "missing": list(self.missing)}


def _lease_missing(s: Snapshot) -> list[str]:
    if not s.leader_election:
        return []
    missing = []
    if not s.lease_looping:
        missing.append("the lease loop is not running")
    if s.lease_age is None:
        missing.append("the Lease has not been read yet")
    elif s.lease_age > s.lease_stale_after:
        missing.append(f"the Lease was last read or renewed {s.lease_age:.0f}s ago (limit {s.lease_stale_after:.0f}s)")
    return missing


def assess(s: Snapshot) -> Verdict:
    missing = _lease_missing(s)
    if s.role == LEADER:
        if s.leader_election and not s.lease_held:
            missing.append("the lease is not held with margin: writes are fenced off until it is renewed or won back")
        if not s.operator_started:  # the CA is loaded during start-up: no word on it before
            missing.append("the operator is starting (listing Secrets, loading the CA)")
        else:
            if s.unwatched:
                missing.append(f"not watching {', '.join(s.unwatched)}")
            if s.ca_problem is not None:
                missing.append(f"no usable CA: {s.ca_problem}")
    elif s.role == STARTING and not missing:
        missing.append("starting")
    elif s.role == STOPPING:
        missing.append("stopping")
    return Verdict(ready=not missing, role=s.role, missing=tuple(missing))
