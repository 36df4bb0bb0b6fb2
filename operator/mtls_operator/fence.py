"""The write fence: whether this process may still write, judged from its own last lease renewal.

Leader election alone does not stop a leader that lost its lease from writing: a process that was paused (a stopped
VM, SIGSTOP, a stall in the kernel or the GIL) wakes up with work in flight and no idea that time passed. So every
mutating API call passes one gate (kube.py) that asks the fence, just before the request leaves, whether the lease is
still held *with margin*.

Why the margin is safe: a renewal that succeeds was sent at `sent`. Another replica may only take the lease after it
has seen our new record unchanged for the whole lease duration, and it cannot see that record before it was written,
which is after `sent`. So nobody else can act before `sent + duration`. The fence closes earlier, at `sent + ttl`
(ttl = the renew deadline, two thirds of the lease): the third left over covers a request that passed the gate but is
still on its way to the API server, and clock-rate differences between machines.

Time is read from CLOCK_BOOTTIME where there is one: unlike CLOCK_MONOTONIC it keeps counting while the machine is
suspended, so a laptop or VM that slept for an hour does not believe its lease is fresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def now() -> float:
    """Seconds on a clock that never goes back and counts suspended time too (Linux); else time.monotonic."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class Fence:
    """Open (writes allowed) until a deadline; extended by each successful renewal, closed for good by `close()` until
    the next `grant()`. Thread-safe: the lease thread extends it while API worker threads check it."""

    def __init__(self, clock: Callable[[], float] = now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._until = float("-inf")

    def grant(self, sent: float, ttl: float) -> None:
        """A renewal sent at `sent` (clock time, taken *before* the request) succeeded: writes are safe until
        sent + ttl. Never moves the deadline back (a late answer to an older renewal)."""
        with self._lock:
            self._until = max(self._until, sent + ttl)

    def close(self) -> None:
        """The lease is lost or given up: refuse every write from now on."""
        with self._lock:
            self._until = float("-inf")

    def is_open(self) -> bool:
        return self.clock() < self._until

    def remaining(self) -> float:
        """Seconds left before writes are refused (negative once closed)."""
        return self._until - self.clock()
