"""Reconciles run on a bounded set of workers fed by a fair queue: a waiting identity is a queued key, not a suspended
task (the operator's peak memory when every identity is due at once), one identity is never reconciled twice at the
same time, a trigger during a run gives exactly one more run, and a busy namespace does not hold up another."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Hashable

from mtls_operator.config import Settings
from mtls_operator.fairness import FairQueue
from mtls_operator.reconciler import Reconciler


def test_namespaces_take_turns_and_a_users_change_goes_first_in_its_own() -> None:
    queue = FairQueue()
    for name in ("a1", "a2", "a3"):
        queue.put(("a", name))
    queue.put(("b", "b1"))
    queue.put(("a", "new"), urgent=True)
    order = [queue.get_nowait() for _ in range(len(queue))]
    assert order == [("a", "new"), ("b", "b1"), ("a", "a1"), ("a", "a2"), ("a", "a3")]
    assert queue.get_nowait() is None and len(queue) == 0


def test_a_waiting_worker_wakes_for_a_key() -> None:
    async def scenario() -> Hashable:
        queue = FairQueue()
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not waiter.done()
        queue.put(("a", "x"))
        return await asyncio.wait_for(waiter, 1)

    assert asyncio.run(scenario()) == ("a", "x")


class Recorder(Reconciler):
    """The queueing of a real Reconciler, with each run replaced by one that holds until released: what runs, how
    many at once, in which order."""

    def __init__(self, workers: int) -> None:
        super().__init__(dataclasses.replace(Settings(), api_workers=workers // 2 or 1), kube=None)
        self.started: list[Hashable] = []
        self.active: set[Hashable] = set()
        self.most = 0
        self.gate = asyncio.Event()

    async def _run(self, key) -> None:
        assert key not in self.active, f"{key} reconciled twice at once"
        self.active.add(key)
        self.most = max(self.most, len(self.active))
        self.started.append(key)
        try:
            await self.gate.wait()
        finally:
            self.active.discard(key)


async def _until(condition, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def test_a_backlog_is_queued_keys_and_a_bounded_number_of_runs() -> None:
    async def scenario() -> None:
        r = Recorder(workers=4)
        for i in range(1000):
            r.trigger(("ns", f"id{i}"))
        await _until(lambda: r.most == 4)
        assert len(r._tasks) == 4  # the workers: nothing else waits as a task
        assert len(r._ready) == 996
        r.gate.set()
        await _until(lambda: len(r.started) == 1000 and not r.active)
        assert r.most == 4
        r.stop()

    asyncio.run(scenario())


def test_a_trigger_during_a_run_gives_exactly_one_more_run() -> None:
    async def scenario() -> None:
        r = Recorder(workers=4)
        key = ("ns", "busy")
        r.trigger(key)
        await _until(lambda: r.started == [key])
        for _ in range(5):  # coalesced: one more run, not five, and never beside the running one
            r.trigger(key)
        r.trigger(("ns", "other"))
        await _until(lambda: ("ns", "other") in r.started)
        assert r.started.count(key) == 1
        r.gate.set()
        # Settled: nothing running, queued or marked to run again — so no third run can follow.
        await _until(lambda: not r.active and not r._running and not r._queued and not r._again and not len(r._ready))
        assert r.started.count(key) == 2
        r.stop()

    asyncio.run(scenario())


def test_a_newcomer_is_not_queued_behind_another_namespaces_backlog() -> None:
    async def scenario() -> None:
        r = Recorder(workers=2)
        for i in range(100):
            r.trigger(("busy", f"id{i}"))
        await _until(lambda: r.most == 2)
        r.trigger(("quiet", "newcomer"), urgent=True)
        r.gate.set()
        await _until(lambda: ("quiet", "newcomer") in r.started)
        assert r.started.index(("quiet", "newcomer")) <= 3
        r.stop()

    asyncio.run(scenario())


def test_nothing_starts_after_stop() -> None:
    """stop() is how a leader that lost its lease goes quiet: a worker cancelled mid-run must not queue its re-run,
    and no trigger may start a new worker."""
    async def scenario() -> None:
        r = Recorder(workers=2)
        key = ("ns", "busy")
        r.trigger(key)
        await _until(lambda: r.started == [key])
        r.trigger(key)  # queued to run again after this run
        await _until(lambda: key in r._again or len(r._ready) == 1)
        r.stop()
        await _until(lambda: r._workers == 0)
        r.trigger(("ns", "late"))  # a worker would be counted and its task tracked at once
        assert r._workers == 0 and not r._tasks and r.started == [key]
        # Nor does any background work: a watch or CA change started after the stop (a start-up stopped during its
        # awaits) is cancelled before its first step.
        ran: list[str] = []

        async def work() -> None:
            ran.append("ran")

        late = r.spawn(work())
        with contextlib.suppress(asyncio.CancelledError):
            await late
        assert late.cancelled() and ran == [] and not r._tasks

    asyncio.run(scenario())


def test_start_up_listings_of_accounts_and_policies_trigger_nothing() -> None:
    """Listed before the CA's first load, which triggers every identity: triggering here as well reconciled each
    identity of a restart twice, the first time without a CA. A later change of either still triggers."""
    r = Reconciler(Settings(), kube=None)  # type: ignore[arg-type]
    triggered: list[Hashable] = []
    r.trigger = lambda key, urgent=False: triggered.append(key)  # type: ignore[method-assign]
    key = ("shop", "api")
    r.identities.put(key, {"metadata": {"namespace": "shop", "name": "api", "uid": "u", "generation": 1,
                                        "resourceVersion": "1"}, "spec": {"serviceAccountName": "api"}})
    assert r.servable(key) and not isinstance(r._spec(key, r.identities.get(key)), Exception)
    account = {"metadata": {"namespace": "shop", "name": "api"}}
    policy = {"metadata": {"name": "p"}, "spec": {"namespaces": ["shop"], "dnsNames": ["*.shop.svc"]}}
    r.service_account_event("ADDED", account, startup=True)
    r.policy_event("ADDED", policy, startup=True)
    assert triggered == [] and ("shop", "api") in r.service_accounts and "p" in r.policies
    r.service_account_event("DELETED", account)
    r.policy_event("DELETED", policy)
    assert triggered == [key, key]
