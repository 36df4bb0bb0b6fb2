"""Fairness between namespaces: renew requests limited by token buckets, signing slots shared round-robin."""

from __future__ import annotations

import asyncio

import pytest

from mtls_operator.fairness import FairSlots, RenewLimiter, RenewLimits, TokenBucket, key_cost


def test_token_bucket_allows_a_burst_then_one_per_interval() -> None:
    bucket = TokenBucket(burst=2, interval=10.0)
    for _ in range(2):
        assert bucket.wait(0.0) == 0.0
        bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(10.0)
    assert bucket.wait(4.0) == pytest.approx(6.0)
    assert bucket.wait(10.0) == 0.0
    bucket.take(10.0)
    assert bucket.wait(10.0) == pytest.approx(10.0)
    # Refills up to the burst, never beyond.
    assert bucket.wait(1000.0) == 0.0 and bucket.tokens == 2.0


def test_token_bucket_with_no_interval_is_unlimited() -> None:
    bucket = TokenBucket(burst=1, interval=0)
    for _ in range(100):
        assert bucket.wait(0.0) == 0.0
        bucket.take(0.0)


def test_renewals_are_limited_per_identity() -> None:
    limiter = RenewLimiter(RenewLimits(identity_burst=3, identity_interval=60, namespace_burst=100,
                                       namespace_interval=1))
    key = ("spam", "a")
    assert [limiter.admit("spam", key, 0.0)[0] for _ in range(3)] == [0.0, 0.0, 0.0]
    wait, which = limiter.admit("spam", key, 0.0)
    assert which == "identity" and wait == pytest.approx(60.0)
    # Refused requests take nothing: asking again and again does not push the next token further away.
    for _ in range(50):
        limiter.admit("spam", key, 1.0)
    assert limiter.admit("spam", key, 60.0) == (0.0, "")
    # Another identity in the namespace has its own bucket.
    assert limiter.admit("spam", ("spam", "b"), 60.0) == (0.0, "")


def test_renewals_are_limited_per_namespace_across_its_identities() -> None:
    limiter = RenewLimiter(RenewLimits(identity_burst=3, identity_interval=60, namespace_burst=4,
                                       namespace_interval=5))
    admitted = [limiter.admit("spam", ("spam", f"id{i}"), 0.0)[0] == 0.0 for i in range(10)]
    assert admitted == [True] * 4 + [False] * 6
    wait, which = limiter.admit("spam", ("spam", "id9"), 0.0)
    assert which == "namespace" and wait == pytest.approx(5.0)
    # Another namespace is not affected by the spammer's empty bucket.
    assert limiter.admit("quiet", ("quiet", "new"), 0.0) == (0.0, "")


def test_expensive_keys_cost_more_of_the_namespace_budget() -> None:
    """A namespace's 10 tokens buy ten ECDSA renewals but one RSA-4096 one (its key takes about a second of CPU); a
    renewal that keeps its key costs one whatever the algorithm."""
    assert key_cost("ECDSA-256", True) == 1 and key_cost("RSA-4096", True) == 8 and key_cost("RSA-4096", False) == 1
    limiter = RenewLimiter(RenewLimits(identity_burst=3, identity_interval=60, namespace_burst=10,
                                       namespace_interval=6))
    assert limiter.admit("rsa", ("rsa", "a"), 0.0, cost=8) == (0.0, "")
    wait, which = limiter.admit("rsa", ("rsa", "b"), 0.0, cost=8)
    assert which == "namespace" and wait == pytest.approx(36.0)  # 6 more tokens at one per 6 s
    assert limiter.admit("rsa", ("rsa", "c"), 0.0, cost=1) == (0.0, "")  # a cheap one still fits
    # A cost above the burst is capped at the burst, so it is never refused forever.
    small = RenewLimiter(RenewLimits(namespace_burst=4, namespace_interval=1))
    assert small.admit("x", ("x", "a"), 0.0, cost=8) == (0.0, "")
    assert small.admit("x", ("x", "b"), 4.0, cost=8) == (0.0, "")


def test_limiter_memory_is_bounded_by_recent_renewals() -> None:
    limiter = RenewLimiter(RenewLimits(identity_burst=1, identity_interval=10, namespace_burst=1000,
                                       namespace_interval=0.01))
    for i in range(500):
        limiter.admit("ns", ("ns", f"id{i}"), 0.0)
    assert len(limiter) == 501
    limiter.forget(("ns", "id0"))
    assert len(limiter) == 500
    limiter.prune(1000.0)
    assert len(limiter) == 0


def _run(coro):
    return asyncio.run(coro)


def test_fair_slots_serve_namespaces_round_robin() -> None:
    """One slot; a spammer queues five issuances, then a newcomer queues one: the newcomer is served second, not sixth
    (a FIFO semaphore serves it last)."""
    async def scenario() -> list[str]:
        slots = FairSlots(1)
        order: list[str] = []
        gate = asyncio.Event()

        async def job(ns: str, name: str) -> None:
            async with slots.slot(ns):
                order.append(name)
                await gate.wait()

        tasks = [asyncio.create_task(job("spam", f"spam{i}")) for i in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("quiet", "quiet")))
        await asyncio.sleep(0)
        assert slots.waiting("spam") == 4 and slots.waiting("quiet") == 1
        gate.set()
        await asyncio.gather(*tasks)
        return order

    assert _run(scenario()) == ["spam0", "quiet", "spam1", "spam2", "spam3", "spam4"]


def test_a_namespace_holds_at_most_its_share_while_others_wait() -> None:
    """Three slots; a queues six and gets two (one is kept spare), then b queues six and gets the spare at once; from
    then on freed slots alternate, so neither holds more than two."""
    async def scenario() -> list[tuple[str, dict[str, int]]]:
        slots = FairSlots(3)
        gate = asyncio.Event()
        seen: list[tuple[str, dict[str, int]]] = []

        async def job(ns: str) -> None:
            async with slots.slot(ns):
                seen.append((ns, dict(slots.held)))
                await gate.wait()

        tasks = [asyncio.create_task(job("a")) for _ in range(6)]
        tasks += [asyncio.create_task(job("b")) for _ in range(6)]
        await asyncio.sleep(0)  # a yield, not a wait: every task has run up to its first await
        assert dict(slots.held) == {"a": 2, "b": 1} and slots.waiting("a") == 4 and slots.waiting("b") == 5
        gate.set()
        await asyncio.gather(*tasks)
        return seen

    seen = _run(scenario())
    order = "".join(ns for ns, _ in seen)
    assert order == "aabababababb", order
    assert all(held.get("a", 0) <= 2 and held.get("b", 0) <= 2 for _, held in seen)
    assert all(sum(held.values()) <= 3 for _, held in seen)


def test_a_cancelled_waiter_gives_up_its_place_and_no_slot_leaks() -> None:
    async def scenario() -> int:
        slots = FairSlots(1)
        gate = asyncio.Event()

        async def job(ns: str) -> None:
            async with slots.slot(ns):
                await gate.wait()

        first = asyncio.create_task(job("a"))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(job("b"))
        last = asyncio.create_task(job("c"))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, last)
        assert doomed.cancelled()
        async with slots.slot("d"):
            pass
        return slots._free

    assert _run(scenario()) == 1


def test_one_namespace_alone_leaves_a_slot_for_a_newcomer() -> None:
    """Slots are held for a whole key generation (seconds for RSA-4096): a namespace alone holds at most capacity - 1,
    so a newcomer starts at once instead of waiting for one of those to end."""
    async def scenario() -> None:
        slots = FairSlots(4)
        gate = asyncio.Event()

        async def job(ns: str) -> None:
            async with slots.slot(ns):
                await gate.wait()

        heavy = [asyncio.create_task(job("spam")) for _ in range(10)]
        await asyncio.sleep(0)
        assert dict(slots.held) == {"spam": 3} and slots.waiting("spam") == 7
        async with slots.slot("newcomer"):  # granted without waiting for any of the spammer's slots
            assert slots.held["newcomer"] == 1
        gate.set()
        await asyncio.gather(*heavy)
        assert slots._free == 4 and not slots.held

    _run(scenario())
