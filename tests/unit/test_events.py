"""Events wait behind every other API call, in a bounded queue that is fair across namespaces (events.py, and the two
priorities of transport.Slots)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from mtls_operator import metrics
from mtls_operator.events import EventQueue, EventSink, Pending, pending
from mtls_operator.transport import Slots

NOW = dt.datetime(2026, 12, 2, 12, 0, 5, 123456, tzinfo=dt.UTC)


def event(namespace: str, name: str) -> Pending:
    return pending({"metadata": {"namespace": namespace, "name": name, "uid": f"u-{name}"}}, "MtlsIdentity",
                   "Normal", "Issued", f"issued {name}", NOW)


def names(events: list[Pending | None]) -> list[str | None]:
    return [e.name if e else None for e in events]


def test_an_event_keeps_a_reference_not_the_object_and_the_time_it_was_posted() -> None:
    e = pending({"apiVersion": "mtls-operator.io/v1alpha1", "metadata": {"namespace": "shop", "name": "api",
                                                                        "uid": "u1", "managedFields": [{}]},
                 "spec": {"big": "x" * 1000}}, "MtlsIdentity", "Warning", "Invalid", "m" * 5000, NOW)
    assert e.involved() == {"apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity", "name": "api",
                            "namespace": "shop", "uid": "u1"}
    assert e.when() == "2026-12-02T12:00:05Z" and len(e.message) == 1024
    authority = pending({"metadata": {"name": "main"}}, "MtlsAuthority", "Normal", "X", "", NOW)
    assert (authority.namespace, authority.scope) == ("default", "")  # written to `default`, queued apart from it
    wide = pending({"metadata": {"namespace": "shop", "name": "api"}}, "MtlsIdentity", "Warning", "Invalid",
                   "\U0001f600" * 2000, NOW)
    assert len(wide.message.encode()) <= 1024 and wide.message == "\U0001f600" * 256  # bytes, not characters


def test_the_operators_own_events_are_not_crowded_out_by_a_tenant_of_default() -> None:
    q = EventQueue(limit=3)
    q.push(pending({"metadata": {"name": "main"}}, "MtlsAuthority", "Warning", "CALost", "", NOW))
    for i in range(10):
        q.push(event("default", f"d{i}"))
    assert sorted(names([q.pop() for _ in range(3)])) == ["d8", "d9", "main"]


def test_namespaces_take_turns() -> None:
    q = EventQueue()
    for e in (event("a", "a1"), event("a", "a2"), event("a", "a3"), event("b", "b1"), event("c", "c1")):
        assert q.push(e) is None
    assert names([q.pop() for _ in range(6)]) == ["a1", "b1", "c1", "a2", "a3", None]
    assert len(q) == 0


def test_when_full_the_longest_line_loses_its_oldest() -> None:
    q = EventQueue(limit=4)
    for e in (event("a", "a1"), event("a", "a2"), event("a", "a3"), event("b", "b1")):
        q.push(e)
    assert names([q.push(event("c", "c1"))]) == ["a1"]
    assert len(q) == 4
    assert sorted(names([q.pop() for _ in range(4)])) == ["a2", "a3", "b1", "c1"]


def test_a_namespace_that_floods_the_full_queue_crowds_out_only_itself() -> None:
    q = EventQueue(limit=3)
    for e in (event("quiet", "q1"), event("other", "o1"), event("flood", "f0")):
        q.push(e)
    dropped = [q.push(event("flood", f"f{i}")) for i in range(1, 50)]
    assert names(dropped) == [f"f{i}" for i in range(0, 49)]  # each push drops the flood's previous one
    assert sorted(names([q.pop() for _ in range(3)])) == ["f49", "o1", "q1"]


def test_a_newcomer_is_itself_dropped_only_when_every_line_holds_one() -> None:
    q = EventQueue(limit=2)
    q.push(event("a", "a1"))
    q.push(event("b", "b1"))
    assert names([q.push(event("c", "c1"))]) == ["c1"]
    assert names([q.pop(), q.pop(), q.pop()]) == ["a1", "b1", None]


def test_the_sink_sends_everything_with_a_bounded_number_of_senders_and_drops_what_waits_at_close() -> None:
    async def run() -> None:
        sent: list[str] = []
        taken: list[str] = []  # in the order the senders took them
        tasks: set[asyncio.Task] = set()
        gate = asyncio.Event()
        in_flight = 0
        most = 0

        async def send(e: Pending) -> str | None:
            nonlocal in_flight, most
            taken.append(e.name)
            in_flight += 1
            most = max(most, in_flight)
            await gate.wait()
            sent.append(e.name)
            in_flight -= 1
            return None

        def spawn(coroutine: Any) -> asyncio.Task:
            task = asyncio.get_running_loop().create_task(coroutine)
            tasks.add(task)
            return task

        sink = EventSink(send, spawn, lambda: NOW, senders=2)
        for i in range(5):
            sink.post({"metadata": {"namespace": "a", "name": f"a{i}"}}, "MtlsIdentity", "Normal", "Issued", "")
        sink.post({"metadata": {"namespace": "b", "name": "b0"}}, "MtlsIdentity", "Normal", "Issued", "")
        assert len(tasks) == 2  # senders start on demand, up to the bound
        await asyncio.sleep(0)  # each sender takes its first Event and waits at the gate
        assert in_flight == 2
        gate.set()
        await asyncio.gather(*tasks)
        assert most == 2 and sorted(sent) == ["a0", "a1", "a2", "a3", "a4", "b0"]
        assert taken == ["a0", "b0", "a1", "a2", "a3", "a4"]  # b's turn came after a's first

        gate.clear()
        tasks.clear()
        before = metrics.events_dropped.labels("stopped")._value.get()
        for i in range(4):
            sink.post({"metadata": {"namespace": "a", "name": f"late{i}"}}, "MtlsIdentity", "Normal", "Issued", "")
        await asyncio.sleep(0)  # let the senders take their first Event each
        assert len(tasks) == 2
        sink.close()
        sink.post({"metadata": {"namespace": "a", "name": "after"}}, "MtlsIdentity", "Normal", "Issued", "")
        gate.set()
        await asyncio.gather(*tasks)
        assert sorted(sent[6:]) == ["late0", "late1"]  # the two in flight finish; the two waiting are dropped
        assert metrics.events_dropped.labels("stopped")._value.get() - before == 2

    asyncio.run(run())


def test_every_event_not_posted_is_counted_by_its_cause() -> None:
    """A refused POST (the namespace is gone, the API server is down) loses the Event as surely as a full queue: the
    dropped counter must say so, or it reads zero while `kubectl describe` shows nothing. One the write fence held
    back (the lease is being lost) counts as stopped, as the rest of the queue will at close."""
    async def run() -> None:
        refused = {"a1": "failed", "b0": "failed", "c0": "stopped"}
        sent: list[str] = []
        tasks: set[asyncio.Task] = set()

        async def send(e: Pending) -> str | None:
            if e.name in refused:
                return refused[e.name]
            sent.append(e.name)
            return None

        def spawn(coroutine: Any) -> asyncio.Task:
            task = asyncio.get_running_loop().create_task(coroutine)
            tasks.add(task)
            return task

        causes = ("full", "failed", "stopped")
        counts = {cause: metrics.events_dropped.labels(cause)._value.get() for cause in causes}
        sink = EventSink(send, spawn, lambda: NOW, limit=3, senders=1)
        for ns, name in (("a", "a0"), ("a", "a1"), ("a", "a2"), ("b", "b0")):  # the fourth pushes a0 out
            sink.post({"metadata": {"namespace": ns, "name": name}}, "MtlsIdentity", "Normal", "Issued", "")
        await asyncio.gather(*tasks)
        sink.post({"metadata": {"namespace": "c", "name": "c0"}}, "MtlsIdentity", "Normal", "Issued", "")
        await asyncio.gather(*tasks)
        assert sent == ["a2"]
        assert {cause: metrics.events_dropped.labels(cause)._value.get() - counts[cause] for cause in causes} == {
            "full": 1, "failed": 2, "stopped": 1}

    asyncio.run(run())


async def _holders(slots: Slots, order: list[str], *spec: tuple[str, bool]) -> list[asyncio.Task]:
    """Tasks that each wait for a slot (in this order), note their name when they get it, and keep it until
    cancelled or released through `release`."""
    release = asyncio.Event()

    async def hold(name: str, low: bool) -> None:
        async with slots.take(low):
            order.append(name)
            await release.wait()

    tasks = []
    for name, low in spec:
        tasks.append(asyncio.create_task(hold(name, low)))
        await asyncio.sleep(0)  # each queues before the next
    return tasks


def test_a_freed_slot_goes_to_a_waiting_call_before_a_waiting_event() -> None:
    async def run() -> None:
        slots = Slots(1)
        order: list[str] = []
        first = await _holders(slots, order, ("first", False), ("event", True), ("write", False), ("status", False))
        assert order == ["first"]
        for task, expected in ((first[0], ["first", "write"]), (first[2], ["first", "write", "status"]),
                               (first[3], ["first", "write", "status", "event"])):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for _ in range(3):
                await asyncio.sleep(0)
            assert order == expected
        first[1].cancel()
        await asyncio.gather(first[1], return_exceptions=True)
        assert slots.free == 1

    asyncio.run(run())


def test_an_event_takes_a_free_slot_when_nothing_waits_and_cancelled_waits_lose_no_slot() -> None:
    async def run() -> None:
        slots = Slots(2)
        order: list[str] = []
        tasks = await _holders(slots, order, ("event", True), ("write", False), ("waiting", False),
                               ("waiting-event", True))
        assert order == ["event", "write"] and slots.free == 0
        tasks[2].cancel()  # cancelled while it waits: it leaves the line
        tasks[3].cancel()
        await asyncio.gather(tasks[2], tasks[3], return_exceptions=True)
        handed = await _holders(slots, order, ("handed", False))
        tasks[0].cancel()  # frees a slot, handed over to "handed"...
        handed[0].cancel()  # ...which is cancelled before it could run: the slot must come back
        await asyncio.gather(tasks[0], handed[0], return_exceptions=True)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        assert slots.free == 2

    asyncio.run(run())


def test_a_line_emptied_by_the_bound_leaves_the_turns_and_comes_back_at_the_end() -> None:
    q = EventQueue(limit=2)
    q.push(event("a", "a1"))
    q.push(event("b", "b1"))
    assert names([q.push(event("a", "a2"))]) == ["a1"]  # a's only Event made way: its line was gone for a moment
    assert names([q.pop(), q.pop(), q.pop()]) == ["b1", "a2", None]
    q.push(event("c", "c1"))
    assert q.clear() == 1 and q.pop() is None and len(q) == 0
