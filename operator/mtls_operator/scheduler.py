"""One process-wide timer for every identity's next look (renewal, or a retry after a failure).

Per-object daemons or timers would cost a task each and, in kopf, a finalizer that blocks deletion while the operator is
down. Here a single task sleeps until the earliest deadline in a heap. Rescheduling a key pushes a new entry and marks
the old one stale, so every operation is O(log n) and nothing is scanned.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, fire: Callable[[Hashable], None], clock: Callable[[], dt.datetime]) -> None:
        self._fire = fire
        self._clock = clock
        self._heap: list[tuple[dt.datetime, int, Hashable]] = []
        self._due: dict[Hashable, tuple[dt.datetime, int]] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self.lateness: Callable[[float], None] = lambda seconds: None  # metrics hook

    def schedule(self, key: Hashable, when: dt.datetime) -> None:
        """Sets (or moves) the key's one deadline."""
        current = self._due.get(key)
        if current and current[0] == when:
            return
        seq = next(self._seq)
        self._due[key] = (when, seq)
        heapq.heappush(self._heap, (when, seq, key))
        if self._heap[0][1] == seq:
            self._wake.set()

    def cancel(self, key: Hashable) -> None:
        self._due.pop(key, None)  # its heap entry goes stale and is dropped when it surfaces

    def __len__(self) -> int:
        return len(self._due)

    def _pop_due(self, now: dt.datetime) -> list[Hashable]:
        keys = []
        while self._heap and self._heap[0][0] <= now:
            when, seq, key = heapq.heappop(self._heap)
            if self._due.get(key) == (when, seq):
                del self._due[key]
                self.lateness((now - when).total_seconds())
                keys.append(key)
        # Stale entries pile up when keys move often; rebuild when they outnumber live ones.
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(w, s, k) for k, (w, s) in self._due.items()]
            heapq.heapify(self._heap)
        return keys

    async def run(self) -> None:
        while True:
            for key in self._pop_due(self._clock()):
                try:
                    self._fire(key)
                except Exception:  # one bad key must not end renewals for everyone
                    log.exception("scheduled look at %s failed to start", key)
            self._wake.clear()
            timeout = None
            if self._heap:
                # Capped so a jump of the wall clock (deadlines are wall-clock times) is noticed within a minute.
                timeout = min(60.0, max(0.0, (self._heap[0][0] - self._clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
