"""The renewal scheduler (one task, a heap) and the status builder (no write when nothing changed)."""

from __future__ import annotations

import asyncio
import datetime as dt

from mtls_operator import status, timestamps
from mtls_operator.scheduler import Scheduler

from .conftest import NOW, issue_view


def test_scheduler_fires_in_deadline_order_and_honours_moves_and_cancels() -> None:
    fired: list[str] = []

    async def scenario() -> None:
        now = dt.datetime.now(dt.UTC)
        done = asyncio.Event()

        def fire(key: str) -> None:
            fired.append(key)
            if key == "last":
                done.set()

        sched = Scheduler(fire, lambda: dt.datetime.now(dt.UTC))
        task = asyncio.create_task(sched.run())
        sched.schedule("b", now + dt.timedelta(milliseconds=60))
        sched.schedule("a", now + dt.timedelta(milliseconds=30))
        sched.schedule("moved", now + dt.timedelta(milliseconds=10))
        sched.schedule("moved", now + dt.timedelta(milliseconds=90))  # moved later: fires once, late
        sched.schedule("gone", now + dt.timedelta(milliseconds=20))
        sched.cancel("gone")
        sched.schedule("last", now + dt.timedelta(milliseconds=120))
        assert len(sched) == 4
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()

    asyncio.run(scenario())
    assert fired == ["a", "b", "moved", "last"]


def test_scheduler_wakes_for_an_earlier_deadline_added_while_sleeping() -> None:
    async def scenario() -> float:
        fired = asyncio.Event()
        sched = Scheduler(lambda key: fired.set(), lambda: dt.datetime.now(dt.UTC))
        task = asyncio.create_task(sched.run())
        sched.schedule("far", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        await asyncio.sleep(0)  # let it go to sleep on the far deadline
        started = asyncio.get_running_loop().time()
        sched.schedule("near", dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=20))
        await asyncio.wait_for(fired.wait(), 5)
        task.cancel()
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 5


def test_healthy_status_is_identical_when_nothing_changed(identity, root) -> None:
    view = issue_view(identity, root)
    first = status.healthy({}, identity.secret_name, identity.spiffe_id, view.cert, NOW, 1, root.fingerprint, 3, NOW)
    again = status.healthy(first, identity.secret_name, identity.spiffe_id, view.cert, NOW, 1, root.fingerprint, 3,
                           NOW + dt.timedelta(hours=1))
    assert not status.differs(first, again)  # lastTransitionTime kept: no write after a restart
    assert first["conditions"][0]["reason"] == "Issued"
    renewed = status.healthy(first, identity.secret_name, identity.spiffe_id, view.cert, NOW, 2, root.fingerprint, 3,
                             NOW)
    assert renewed["conditions"][0]["reason"] == "Renewed"
    assert renewed["conditions"][0]["lastTransitionTime"] == first["conditions"][0]["lastTransitionTime"]


def test_failed_status_keeps_the_last_certificate_facts_and_flips_ready(identity, root) -> None:
    view = issue_view(identity, root)
    ok = status.healthy({}, identity.secret_name, identity.spiffe_id, view.cert, NOW, 1, root.fingerprint, 1, NOW)
    later = NOW + dt.timedelta(minutes=1)
    bad = status.failed(ok, status.Ready.INVALID_SPEC, "spec.duration is bad", 2, later)
    assert bad["serialNumber"] == ok["serialNumber"]
    assert bad["conditions"][0] == {"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                    "message": "spec.duration is bad", "observedGeneration": 2,
                                    "lastTransitionTime": timestamps.text(later)}
    assert status.merge_patch(ok, bad) == {"observedGeneration": 2, "conditions": bad["conditions"]}
