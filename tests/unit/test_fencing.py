"""Fencing (issue 10, item 4): once the lease is not held with margin, no write leaves the process; and renewal runs
on a thread of its own, so a busy event loop or CPU-bound issuance cannot make the lease lapse."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any

import kubernetes
import pytest

from mtls_operator.fence import Fence
from mtls_operator.kube import Conflict, Fenced, Kube, NotFound
from mtls_operator.leader import LeaderElection, LeaseTiming


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_fence_opens_from_the_renewal_send_time_and_closes_at_the_deadline() -> None:
    clock = FakeClock()
    fence = Fence(clock)
    assert not fence.is_open()  # nothing granted yet: a replica that never won the lease writes nothing
    fence.grant(sent=clock.t - 3, ttl=10)  # the renewal took 3 s to come back: the window counts from sending
    assert fence.is_open() and fence.remaining() == pytest.approx(7)
    clock.t += 6.9
    assert fence.is_open()
    clock.t += 0.2
    assert not fence.is_open()


def test_a_late_answer_never_shortens_the_fence_but_close_ends_it() -> None:
    clock = FakeClock()
    fence = Fence(clock)
    fence.grant(clock.t, 10)
    fence.grant(clock.t - 8, 10)  # an older renewal answered late
    assert fence.remaining() == pytest.approx(10)
    fence.close()
    assert not fence.is_open()
    fence.grant(clock.t, 10)  # won back: open again
    assert fence.is_open()


def _unreachable_kube(fence: Fence) -> Kube:
    config = kubernetes.client.Configuration()
    config.host = "http://127.0.0.1:9"  # discard port: anything actually sent fails to connect
    config.retries = False
    return Kube(config, workers=1, fence=fence)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_every_mutating_call_is_refused_at_the_gate_once_the_fence_is_closed(method: str) -> None:
    async def go() -> None:
        kube = _unreachable_kube(Fence())
        try:
            with pytest.raises(Fenced) as refused:
                await kube._call(method, "/api/v1/namespaces/a/secrets/b", {"x": 1})
            assert refused.value.reason == "Fenced" and "not sent" in str(refused.value)
        finally:
            await kube.close()

    asyncio.run(go())


class ClosingWhileConnecting(Fence):
    """Open when the call is let through, closed by the time its connection is made."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def is_open(self) -> bool:
        self.asked += 1
        return self.asked == 1


def test_a_fence_that_closes_while_the_connection_is_made_still_stops_the_write() -> None:
    received: list[bytes] = []

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))  # b"" once the client closes without sending
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(listen, "127.0.0.1", 0)
        config = kubernetes.client.Configuration()
        config.host = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        fence = ClosingWhileConnecting()
        kube = Kube(config, workers=1, fence=fence)
        try:
            with pytest.raises(Fenced):
                await kube._call("POST", "/api/v1/namespaces/a/secrets", {"x": 1})
            assert fence.asked == 2  # before connecting, and once connected
        finally:
            await kube.close()
        while not received:  # the connection it made is closed unused
            await asyncio.sleep(0.01)
        server.close()
        assert received == [b""]

    asyncio.run(asyncio.wait_for(go(), 30))


def test_reads_reviews_and_the_lease_itself_pass_the_gate() -> None:
    async def go() -> None:
        kube = _unreachable_kube(Fence())
        try:
            calls = (lambda: kube._call("GET", "/api/v1/namespaces/a/secrets/b", timeout=1),
                     lambda: kube.create_token_review("not-a-token"))
            for call in calls:
                with pytest.raises(Exception) as sent:
                    await call()
                assert not isinstance(sent.value, Fenced)  # it went to the network (and found nobody there)
            for blocking in (lambda: kube._request("GET", "/api/v1/namespaces/a/secrets/b", timeout=1),
                             lambda: kube.replace_lease({"metadata": {"namespace": "a", "name": "l"}}, timeout=1)):
                with pytest.raises(Exception) as sent:
                    blocking()
                assert not isinstance(sent.value, Fenced)
        finally:
            await kube.close()

    asyncio.run(go())


class FakeLeases:
    """The Lease API as leader.py uses it: blocking calls, optimistic concurrency on resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.lock = threading.Lock()
        self.renewals = 0

    def get_lease(self, namespace: str, name: str, timeout: float = 0) -> dict[str, Any]:
        with self.lock:
            if self.lease is None:
                raise NotFound(404, "NotFound", name)
            return copy.deepcopy(self.lease)

    def create_lease(self, namespace: str, name: str, spec: dict[str, Any], timeout: float = 0) -> dict[str, Any]:
        with self.lock:
            if self.lease is not None:
                raise Conflict(409, "AlreadyExists", name)
            self.lease = {"metadata": {"namespace": namespace, "name": name, "resourceVersion": "1"},
                          "spec": dict(spec)}
            return copy.deepcopy(self.lease)

    def replace_lease(self, lease: dict[str, Any], timeout: float = 0) -> dict[str, Any]:
        with self.lock:
            assert self.lease is not None
            if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
                raise Conflict(409, "Conflict", "stale")
            self.lease = copy.deepcopy(lease)
            self.lease["metadata"]["resourceVersion"] = str(int(lease["metadata"]["resourceVersion"]) + 1)
            self.renewals += 1
            return copy.deepcopy(self.lease)

    def take(self, holder: str) -> None:
        with self.lock:
            assert self.lease is not None
            self.lease["spec"]["holderIdentity"] = holder
            self.lease["metadata"]["resourceVersion"] = str(int(self.lease["metadata"]["resourceVersion"]) + 1)


def _elector(leases: FakeLeases) -> LeaderElection:
    return LeaderElection(leases, "ns", "lease", "me", LeaseTiming.for_duration(1.5))  # type: ignore[arg-type]


def test_renewal_goes_on_while_the_event_loop_and_the_gil_are_busy() -> None:
    """The old renewal loop was a coroutine: a blocked event loop stopped it, and the lease lapsed under load. Here the
    calling thread hogs the CPU in Python (holding the GIL between bytecodes, as a busy event loop does) for several
    lease durations, while other threads generate RSA-4096 keys as issuance does; the lease must still be renewed."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    leases = FakeLeases()
    elector = _elector(leases)
    assert elector.try_acquire_or_renew()
    lost: list[str] = []
    elector.start_keeping(lost.append)
    done = threading.Event()

    def issue() -> None:
        while not done.is_set():
            rsa.generate_private_key(public_exponent=65537, key_size=4096)

    workers = [threading.Thread(target=issue, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 4 * elector.timing.duration
        spins = 0
        while time.monotonic() < deadline:  # a busy event loop: pure Python, never yielding
            spins += 1
        assert not lost, f"the lease was lost under load: {lost}"
        assert leases.renewals >= 3
        assert elector.fence.is_open()
    finally:
        done.set()
        elector.stop_keeping()


def test_a_lease_taken_by_another_closes_the_fence_before_telling_the_owner() -> None:
    leases = FakeLeases()
    elector = _elector(leases)
    assert elector.try_acquire_or_renew()
    seen: list[tuple[str, bool]] = []
    told = threading.Event()

    def on_lost(reason: str) -> None:
        seen.append((reason, elector.fence.is_open()))
        told.set()

    elector.start_keeping(on_lost)
    try:
        leases.take("someone-else")
        assert told.wait(10)
        assert seen == [("another replica holds it", False)]
        assert not elector.is_leader
    finally:
        elector.stop_keeping()


def test_a_stalled_process_steps_down_even_if_nobody_took_over() -> None:
    """After a pause longer than the deadline (SIGSTOP, a frozen VM), work from before the gap is not trusted: the
    keeper steps down at once; campaigning again wins the same, untouched lease back."""
    clock = FakeClock()
    leases = FakeLeases()
    elector = LeaderElection(leases, "ns", "lease", "me", LeaseTiming(duration=15, renew_deadline=10,  # type: ignore[arg-type]
                                                                    retry_period=0.05), clock=clock)
    assert elector.try_acquire_or_renew()
    clock.t += 11  # the whole process was paused
    told = threading.Event()
    reasons: list[str] = []
    elector.start_keeping(lambda r: (reasons.append(r), told.set()))
    try:
        assert told.wait(10)
        assert reasons == ["not renewed for 10s"] and not elector.fence.is_open()
        assert elector.try_acquire_or_renew() and elector.fence.is_open()  # nobody else holds it: won back
    finally:
        elector.stop_keeping()
