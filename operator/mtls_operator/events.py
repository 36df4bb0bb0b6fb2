"""Events: the operator's least urgent writes, queued and sent behind everything else.

An Event tells a person what happened (`kubectl describe`); the Secret and the status are what workloads and
controllers wait on. Each issuance used to spawn its Event as a task of its own that took an API slot like any other
call, so in a backlog a third of the writes the API server had to absorb before the last identity was Ready were
Events. Kubernetes treats Events as best effort (client-go's recorder queues and drops them); so do we:

- They wait for a free API slot that no other call of ours is waiting for (transport.Slots' low priority), so a
  backlog's Secrets and statuses go first and its Events follow, in order, as the API server has room.
- They are kept in a bounded queue, one line per namespace (and one for cluster-scoped objects, the operator's own),
  sent round-robin across lines. When it is full, the longest line loses its oldest Event: a tenant that makes
  thousands of Events (a spec that fails on every edit, say) never keeps more than an equal share of a full queue,
  and never grows this process's memory.
- At most a quarter of the API slots (one, if there are fewer than eight) carry Events at once: a slot is not taken
  back from an Event in flight, so Events alone never hold the slots a write needs.
- Each is stamped when it is posted, not when it is sent, so its time is when the thing happened.
- Once the reconciler stops (shutdown, or the lease is lost), what is queued is dropped: the write fence would refuse
  it anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NamedTuple

from . import metrics, timestamps
from .fairness import FairQueue

log = logging.getLogger(__name__)
QUEUE_LIMIT = 20_000  # Events waiting at most (a few hundred bytes each): a renewal wave of 10,000 fits
SENDERS = 8  # Events in flight at most (and never more than a quarter of the API slots)
WARN_INTERVAL = 60.0  # seconds between warnings that Events were dropped
MESSAGE_BYTES = 1024  # an Event's message at most (events.k8s.io/v1 refuses a longer note)


class Pending(NamedTuple):
    """What an Event needs, without holding on to the object it is about (a newer version may replace it). Flat and
    small (about 400 bytes with its message): a renewal wave queues one per identity."""

    scope: str  # its line in the queue (first: fairness.FairQueue's key): the object's namespace, "" if cluster-scoped
    namespace: str  # where the Event is written
    api_version: str
    kind: str
    name: str | None
    uid: str | None
    event_type: str
    reason: str
    message: str
    at: float  # POSIX seconds when it was posted

    def involved(self) -> dict[str, Any]:
        """The involvedObject reference."""
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "namespace": self.namespace,
                "uid": self.uid}

    def when(self) -> str:
        """RFC 3339, seconds."""
        return timestamps.text(dt.datetime.fromtimestamp(self.at, dt.UTC))


def pending(involved: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str,
            now: dt.datetime) -> Pending:
    """The message is cut to MESSAGE_BYTES of UTF-8, not characters: parts of it are a tenant's (a spec's error), and
    the queue's bound must hold in bytes."""
    meta = involved.get("metadata", {})
    scope = meta.get("namespace") or ""
    return Pending(scope, scope or "default", involved.get("apiVersion", "v1"), kind, meta.get("name"),
                   meta.get("uid"), event_type, reason, message.encode()[:MESSAGE_BYTES].decode(errors="ignore"),
                   now.timestamp())


class EventQueue(FairQueue):
    """The reconcile queue's turns across namespaces (fairness.FairQueue), with a bound: pure bookkeeping,
    unit-tested without an API."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        if limit < 1:
            raise ValueError("the Event queue must hold at least one Event")
        super().__init__()
        self.limit = limit

    def push(self, event: Pending) -> Pending | None:
        """Queues `event`; returns the Event dropped to make room for it, if any."""
        dropped = None
        if len(self) >= self.limit:
            victim = self.longest_line()
            assert victim is not None  # full, so not empty
            if self.line_length(event.scope) + 1 >= self.line_length(victim):
                victim = event.scope  # its own line, with this Event, is the longest: it pays
            if not self.line_length(victim):
                return event  # every line is as short as can be: the newcomer itself is dropped
            dropped = self.drop_oldest(victim)
        self.put(event)
        return dropped

    def pop(self) -> Pending | None:
        """The oldest Event of the line whose turn it is; that line goes to the back."""
        return self.get_nowait()  # type: ignore[return-value]


class EventSink:
    """Posts Events from the queue with at most SENDERS in flight, each at the API connection's low priority. Senders
    are started on demand (`spawn`, so shutdown cancels them) and end when the queue is empty. `send` returns None once
    the Event is posted, else the cause it is counted as dropped for ("failed", "stopped": kube.post_event). It is not
    retried: the API server that refused it is, as a rule, busy or missing the namespace, and a retry would take a slot
    from the writes."""

    def __init__(self, send: Callable[[Pending], Coroutine[Any, Any, str | None]],
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task], clock: Callable[[], dt.datetime],
                 limit: int = QUEUE_LIMIT, senders: int = SENDERS) -> None:
        self._send, self._spawn, self._clock = send, spawn, clock
        self.queue = EventQueue(limit)
        self._senders, self._max_senders = 0, senders
        self._closed = False
        self._dropped_unreported = 0
        self._last_warning = float("-inf")

    def post(self, involved: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str) -> None:
        """Never waits and never fails: the caller is a reconcile, which an Event must not slow."""
        if self._closed:
            return
        if self.queue.push(pending(involved, kind, event_type, reason, message, self._clock())) is not None:
            self._dropped(1)
        if self._senders < self._max_senders:
            # Counted down when the task ends, however it ends (a task cancelled before its first step never runs
            # the coroutine's own `finally`).
            self._spawn(self._drain()).add_done_callback(self._sender_done)
            self._senders += 1

    def close(self) -> None:
        """No more Events from this process; what waits is dropped (counted, not warned about: it is a shutdown)."""
        self._closed = True
        metrics.events_dropped.labels("stopped").inc(self.queue.clear())

    def _sender_done(self, _task: asyncio.Task) -> None:
        self._senders -= 1

    async def _drain(self) -> None:
        while (event := self.queue.pop()) is not None:
            # Never raises but for cancellation (kube.post_event logs its failures).
            if (cause := await self._send(event)) is not None:
                metrics.events_dropped.labels(cause).inc()

    def _dropped(self, n: int) -> None:
        metrics.events_dropped.labels("full").inc(n)
        self._dropped_unreported += n
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL:
            log.warning("the Event queue is full (%d waiting): %d Events dropped, the oldest of the namespaces with "
                        "the most waiting", len(self.queue), self._dropped_unreported)
            self._last_warning, self._dropped_unreported = now, 0
