"""Fairness between tenants: one namespace must not be able to starve another of issuance.

Two mechanisms, both cheap and both local to this process:

- **Renew requests are rate-limited** (`RenewLimiter`): the `mtls-operator.io/renew` annotation is free for a tenant to
  set as often as it likes, and each new value used to cost a fresh key (a second of CPU for RSA-4096). A token bucket
  per identity and one per namespace bound that. A limited request is deferred, not dropped: the annotation stays on
  the object and the identity is looked at again when a token is due.
- **Signing slots are shared round-robin across namespaces** (`FairSlots`): the bounded signing pool
  (`--max-concurrent-issuance`) used to be a FIFO semaphore, so a namespace that queued a hundred issuances ahead of a
  newcomer made it wait for all hundred. Here each namespace has its own queue and a freed slot goes to the next
  namespace in turn, so a newcomer waits for at most one slot to free up, whatever the others have queued.

The bucket and the limiter are pure (the clock is passed in), so they are unit-tested without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Hashable
from typing import Any


@dataclasses.dataclass
class TokenBucket:
    """`burst` tokens at most, one more every `interval` seconds. interval <= 0 means unlimited."""

    burst: int
    interval: float
    tokens: float = -1.0  # -1: full (set on first use)
    stamp: float = 0.0

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.stamp = float(self.burst), now
            return
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) / self.interval)
            self.stamp = now

    def wait(self, now: float, cost: int = 1) -> float:
        """Seconds until `cost` tokens are available (0: now; a cost above the burst counts as the burst). Takes
        nothing."""
        if self.interval <= 0:
            return 0.0
        self._refill(now)
        need = float(min(cost, self.burst))
        return 0.0 if self.tokens >= need else (need - self.tokens) * self.interval

    def take(self, now: float, cost: int = 1) -> None:
        if self.interval > 0:
            self._refill(now)
            self.tokens -= float(min(cost, self.burst))

    def full(self, now: float) -> bool:
        return self.interval <= 0 or (self.wait(now) == 0.0 and self.tokens >= self.burst)


# What a renewal costs from its namespace's bucket, by the key it generates: roughly the key generation's CPU time in
# units of an ECDSA issuance's whole cost (key, signature, API writes). RSA key generation grows with the cube of the
# size: RSA-4096 takes about a second of CPU. A renewal that keeps its key (rotationPolicy: Never) costs 1.
KEY_COST = {"RSA-2048": 2, "RSA-3072": 4, "RSA-4096": 8}


def key_cost(label: str, new_key: bool) -> int:
    return KEY_COST.get(label, 1) if new_key else 1


@dataclasses.dataclass(frozen=True)
class RenewLimits:
    """Defaults: an identity may ask for 3 renewals at once, then one a minute; a namespace has 10 tokens at once, then
    one every 6 seconds (10 a minute, whatever its number of identities), and a renewal takes `key_cost` of them (an
    RSA-4096 one 8). A burst of 0 turns that limit off. Due renewals, new identities and healing are never limited:
    only what a tenant can trigger at will by writing an annotation."""

    identity_burst: int = 3
    identity_interval: float = 60.0
    namespace_burst: int = 10
    namespace_interval: float = 6.0


class RenewLimiter:
    """Token buckets per identity and per namespace; a request goes through only if both have a token (and then takes
    one from each), so neither many identities in one namespace nor one identity alone can exceed its share."""

    def __init__(self, limits: RenewLimits) -> None:
        self.limits = limits
        self._identities: dict[Hashable, TokenBucket] = {}
        self._namespaces: dict[str, TokenBucket] = {}

    def _buckets(self, namespace: str, key: Hashable) -> tuple[TokenBucket, TokenBucket]:
        lim = self.limits
        ident = self._identities.get(key)
        if ident is None:
            ident = self._identities[key] = TokenBucket(max(1, lim.identity_burst),
                                                        lim.identity_interval if lim.identity_burst > 0 else 0)
        ns = self._namespaces.get(namespace)
        if ns is None:
            ns = self._namespaces[namespace] = TokenBucket(max(1, lim.namespace_burst),
                                                           lim.namespace_interval if lim.namespace_burst > 0 else 0)
        return ident, ns

    def admit(self, namespace: str, key: Hashable, now: float, cost: int = 1) -> tuple[float, str]:
        """(0, "") and tokens taken from both buckets (one from the identity's, `cost` from the namespace's) when the
        renewal may go ahead now; otherwise how many seconds until it may, and which limit holds it ("identity" or
        "namespace"). Nothing is taken from a refused request."""
        ident, ns = self._buckets(namespace, key)
        waits = ident.wait(now), ns.wait(now, cost)
        if max(waits) > 0:
            return max(waits), "identity" if waits[0] >= waits[1] else "namespace"
        ident.take(now)
        ns.take(now, cost)
        return 0.0, ""

    def forget(self, key: Hashable) -> None:
        """An identity was deleted: its bucket goes (namespace buckets stay, so delete-and-recreate gains nothing)."""
        self._identities.pop(key, None)

    def prune(self, now: float) -> None:
        """Full buckets carry no information: dropping them bounds memory by the identities recently renewed."""
        for table in (self._identities, self._namespaces):
            for k in [k for k, b in table.items() if b.full(now)]:
                del table[k]

    def __len__(self) -> int:
        return len(self._identities) + len(self._namespaces)


class FairSlots:
    """A semaphore of `capacity` slots whose waiters queue per namespace. A freed slot goes to the waiting namespace
    that holds the fewest slots, and among those to the one served least recently (first come first served within a
    namespace): a newcomer waits for one slot to free up, not for everyone queued before it, and a busy namespace
    holds no more than its share while others wait.

    One namespace alone holds at most capacity - 1 slots (when there are two or more): slots are held for the whole of
    a key generation, seconds for RSA-4096, so without a spare one a newcomer would wait for the first of those to end.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.per_namespace = max(1, self.capacity - 1)
        self._free = self.capacity
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._served: dict[str, int] = {}  # namespace -> sequence number of its last grant (only while it holds/waits)
        self._seq = itertools.count()
        self.held: collections.Counter[str] = collections.Counter()

    def waiting(self, namespace: str | None = None) -> int:
        if namespace is not None:
            return len(self._queues.get(namespace, ()))
        return sum(len(q) for q in self._queues.values())

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        await self._acquire(namespace)
        try:
            yield
        finally:
            self._release(namespace)

    def _grant(self, namespace: str) -> None:
        self.held[namespace] += 1
        self._served[namespace] = next(self._seq)

    async def _acquire(self, namespace: str) -> None:
        # A free slot with waiters means they are all at their cap (release hands slots to any other): take it.
        if self._free > 0 and self.held.get(namespace, 0) < self.per_namespace:
            self._free -= 1
            self._grant(namespace)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(namespace, collections.deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(namespace)  # granted just as we were cancelled: pass the slot on
            else:
                self._discard(namespace, future)
            raise
        # The slot was handed over by _release, already counted in `held`.

    def _discard(self, namespace: str, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(namespace)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(future)
        if not queue:
            del self._queues[namespace]

    def _release(self, namespace: str) -> None:
        self.held[namespace] -= 1
        if self.held[namespace] <= 0:
            del self.held[namespace]
        while True:
            eligible = [n for n in self._queues if self.held.get(n, 0) < self.per_namespace]
            if not eligible:
                break
            ns = min(eligible, key=lambda n: (self.held.get(n, 0), self._served.get(n, -1)))
            queue = self._queues[ns]
            future = queue.popleft()
            if not queue:
                del self._queues[ns]
            if not future.done():
                self._grant(ns)
                future.set_result(None)
                return
        self._free += 1
        for ns in [n for n in self._served if n not in self.held and n not in self._queues]:
            del self._served[ns]  # bounded by the namespaces holding or waiting


class FairQueue:
    """Identities waiting for a reconcile worker, served round-robin across namespaces. A waiting identity costs a key
    in a deque, not a task: at start-up, or after a CA change, every identity is due at once, and 10,000 suspended
    reconciles held their bodies, frames and futures all together (the operator's peak memory). A busy namespace's
    line does not hold up another's; within a namespace, a user's own change (a new identity, an edited spec, a
    deleted Secret) goes to the front, ahead of routine work such as a root rotation's paced reissues."""

    def __init__(self) -> None:
        self._lines: dict[str, collections.deque[Hashable]] = {}
        self._turns: collections.deque[str] = collections.deque()  # namespaces with a line, next served first
        self._size = 0
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def put(self, key: tuple[Any, ...], urgent: bool = False) -> None:
        """`key[0]` names the line (the namespace) it waits in."""
        line = self._lines.get(key[0])
        if line is None:
            line = self._lines[key[0]] = collections.deque()
            self._turns.append(key[0])
        if urgent:
            line.appendleft(key)
        else:
            line.append(key)
        self._size += 1
        self._nonempty.set()

    def get_nowait(self) -> Hashable | None:
        if not self._size:
            return None
        namespace = self._turns.popleft()
        line = self._lines[namespace]
        key = line.popleft()
        if line:
            self._turns.append(namespace)
        else:
            del self._lines[namespace]
        self._size -= 1
        if not self._size:
            self._nonempty.clear()
        return key

    def line_length(self, namespace: str) -> int:
        line = self._lines.get(namespace)
        return len(line) if line else 0

    def longest_line(self) -> str | None:
        """O(lines): for a bounded user (events.py) that must shed work, and only then."""
        return max(self._lines, key=lambda namespace: len(self._lines[namespace])) if self._lines else None

    def drop_oldest(self, namespace: str) -> Hashable:
        """Takes the head of one namespace's line out of the queue (it must have one)."""
        line = self._lines[namespace]
        key = line.popleft()
        if not line:
            del self._lines[namespace]
            self._turns.remove(namespace)
        self._size -= 1
        if not self._size:
            self._nonempty.clear()
        return key

    def clear(self) -> int:
        """Empties the queue; returns how many it held."""
        dropped, self._size = self._size, 0
        self._lines.clear()
        self._turns.clear()
        self._nonempty.clear()
        return dropped

    async def get(self) -> Hashable:
        while True:
            key = self.get_nowait()
            if key is not None:
                return key
            await self._nonempty.wait()
