"""/readyz: the verdict (pure) and the server that answers it, standby and leading alike."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import types

from aiohttp.test_utils import TestClient, TestServer

from mtls_operator import readiness
from mtls_operator.config import Settings
from mtls_operator.fence import Fence
from mtls_operator.fence import now as fence_now
from mtls_operator.health import HealthServer, ProcessState
from mtls_operator.kube import WatchHealth
from mtls_operator.readiness import LEADER, STANDBY, STARTING, STOPPING, Snapshot, assess
from mtls_operator.reconciler import Reconciler

LEADING = Snapshot(role=LEADER, lease_looping=True, lease_age=1.0, ca_problem=None, operator_started=True)
STANDING_BY = Snapshot(role=STANDBY, lease_looping=True, lease_age=1.0)


def test_a_serving_leader_is_ready() -> None:
    verdict = assess(LEADING)
    assert verdict.ready and verdict.http_status == 200
    assert verdict.body() == {"ready": True, "role": "leader", "missing": []}


def test_a_healthy_standby_is_ready_without_ca_or_watches() -> None:
    # A standby that waited for leadership would stall every rolling update (maxUnavailable 0).
    assert assess(STANDING_BY).ready


def test_a_leader_waits_for_start_up_watches_and_ca() -> None:
    starting = assess(dataclasses.replace(LEADING, operator_started=False))
    assert not starting.ready and starting.http_status == 503
    assert starting.missing == ("the operator is starting (listing Secrets, loading the CA)",)
    unwatched = assess(dataclasses.replace(LEADING, unwatched=("mtlsidentities.mtls-operator.io (HTTP 404)",)))
    assert unwatched.missing == ("not watching mtlsidentities.mtls-operator.io (HTTP 404)",)
    broken = assess(dataclasses.replace(LEADING, ca_problem="CA Secret x/y does not exist"))
    assert broken.missing == ("no usable CA: CA Secret x/y does not exist",)


def test_stale_or_stopped_lease_loops_are_not_ready() -> None:
    stale = assess(dataclasses.replace(STANDING_BY, lease_age=40.0))
    assert not stale.ready and "40s ago" in stale.missing[0]
    stopped = assess(dataclasses.replace(STANDING_BY, lease_looping=False))
    assert stopped.missing == ("the lease loop is not running",)
    assert not assess(dataclasses.replace(LEADING, lease_age=20.0)).ready


def test_without_leader_election_the_lease_is_not_asked_about() -> None:
    alone = Snapshot(role=LEADER, leader_election=False, ca_problem=None, operator_started=True)
    assert assess(alone).ready


def test_starting_and_stopping_are_not_ready() -> None:
    assert assess(Snapshot(role=STARTING, lease_looping=True)).missing == ("the Lease has not been read yet",)
    assert assess(Snapshot(role=STARTING, leader_election=False)).missing == ("starting",)
    assert not assess(dataclasses.replace(LEADING, role=STOPPING)).ready


# ---- the live state behind the snapshot ----

class FakeElector:
    def __init__(self, looping: bool, last_contact: float | None) -> None:
        self.looping, self.last_contact = looping, last_contact
        self.clock = fence_now
        self.fence = Fence()
        self.fence.grant(fence_now(), 60)


def _insights(scanned: bool = True) -> types.SimpleNamespace:
    """kopf's insights as its observers leave them before and after the initial scan."""
    ready = asyncio.Event()
    if scanned:
        ready.set()
    return types.SimpleNamespace(ready_resources=ready, ready_namespaces=ready)


def _reconciler(ca: object = None, ca_error: str = "", down: tuple[str, ...] = ()) -> types.SimpleNamespace:
    return types.SimpleNamespace(ca=ca, ca_error=ca_error, unwatched=lambda: down)


def test_process_state_from_standby_to_leading() -> None:
    async def go() -> None:
        state = ProcessState(Settings(lease_duration=dt.timedelta(seconds=15)))
        assert state.snapshot().role == STARTING
        state.elector = FakeElector(looping=True, last_contact=fence_now())
        snap = state.snapshot()
        assert snap.role == STANDBY and assess(snap).ready
        state.leading = True
        state.memo = types.SimpleNamespace()  # kopf's start-up handler has not made the reconciler yet
        state.kopf_ready = asyncio.Event()
        state.insights = _insights(scanned=False)
        assert assess(state.snapshot()).missing[0].startswith("the operator is starting")
        state.memo.reconciler = _reconciler(ca=object())
        state.kopf_ready.set()
        assert state.snapshot().unwatched == ("kopf's watch streams (discovering resources and namespaces)",)
        state.insights = _insights()
        assert assess(state.snapshot()).ready
        # One of the reconciler's own streams is down (the CRD was deleted, say): not ready, and why.
        state.memo.reconciler = _reconciler(ca=object(), down=("mtlsidentities.mtls-operator.io (HTTP 404)",))
        assert assess(state.snapshot()).missing == ("not watching mtlsidentities.mtls-operator.io (HTTP 404)",)
        state.memo.reconciler = _reconciler(ca_error="CA Secret a/b is unusable: expired")
        assert assess(state.snapshot()).missing == ("no usable CA: CA Secret a/b is unusable: expired",)
        state.stopping = True
        assert state.snapshot().role == STOPPING

    asyncio.run(go())


def test_a_leader_that_lost_its_lease_says_so_then_stands_by_again() -> None:
    """Issue 10 item 5: the process outlives a lost lease; /readyz must tell the truth through the step-down and the
    new campaign, rather than keep saying "leader, ready" while every write is fenced off."""

    async def go() -> None:
        state = ProcessState(Settings(lease_duration=dt.timedelta(seconds=15)))
        state.elector = FakeElector(looping=True, last_contact=fence_now())
        state.leading, state.kopf_ready, state.insights = True, asyncio.Event(), _insights()
        state.memo = types.SimpleNamespace(reconciler=_reconciler(ca=object()))
        state.kopf_ready.set()
        assert assess(state.snapshot()).ready
        state.elector.fence.close()  # no renewal within the deadline: fenced, not yet stepped down
        verdict = assess(state.snapshot())
        assert not verdict.ready and verdict.role == LEADER
        assert verdict.missing == ("the lease is not held with margin: writes are fenced off until it is renewed or "
                                   "won back",)
        state.leading, state.memo = False, None  # stepped down, campaigning again
        snap = state.snapshot()
        assert snap.role == STANDBY and assess(snap).ready
        state.elector.last_contact = fence_now() - 60  # ...and the API server has not answered for a minute
        assert not assess(state.snapshot()).ready

    asyncio.run(go())


def test_the_server_answers_both_probes() -> None:
    snapshot = {"now": Snapshot(role=STANDBY, lease_looping=True, lease_age=None)}

    async def go() -> None:
        server = HealthServer(0, lambda: snapshot["now"])
        async with TestClient(TestServer(server.app())) as client:
            live = await client.get("/healthz")
            assert live.status == 200 and (await live.json())["role"] == "standby"
            not_ready = await client.get("/readyz")
            assert not_ready.status == 503
            assert (await not_ready.json())["missing"] == ["the Lease has not been read yet"]
            snapshot["now"] = LEADING
            ready = await client.get("/readyz")
            assert ready.status == 200 and (await ready.json()) == readiness.assess(LEADING).body()

    asyncio.run(go())


def test_one_namespace_stream_down_does_not_make_the_leader_unready() -> None:
    """With --namespace (chart watchNamespaces), each namespace has its own streams; a tenant can break its own
    (delete the operator's RoleBinding there). That must not turn the leader unready for every other namespace; a
    resource nobody's stream can watch must."""
    r = Reconciler(Settings(), kube=None)  # type: ignore[arg-type]
    r._watches = {(what, ns): WatchHealth() for what in ("secrets", "mtlsidentities.mtls-operator.io")
                  for ns in ("shop", "bank")}
    assert r.unwatched() == ()
    r._watches[("secrets", "shop")].down("HTTP 403")
    assert r.unwatched() == ()
    r._watches[("secrets", "bank")].down("HTTP 403")
    assert r.unwatched() == ("secrets (HTTP 403)",)
    r._watches[("secrets", "shop")].up()
    cluster_wide = Reconciler(Settings(), kube=None)  # type: ignore[arg-type]
    cluster_wide._watches = {("mtlsidentities.mtls-operator.io", None): WatchHealth()}
    cluster_wide._watches[("mtlsidentities.mtls-operator.io", None)].down("HTTP 404")
    assert cluster_wide.unwatched() == ("mtlsidentities.mtls-operator.io (HTTP 404)",)
