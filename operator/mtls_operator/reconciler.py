"""Turns decisions into effects: the one place where an identity is read from the caches, decided on (plan.py),
issued (pki.py), written (kube.py), reported (status, Events, metrics) and scheduled for its next look.

Triggers (identity events, Secret events, the CA changing, the scheduler) all land in `trigger()`, which coalesces them:
per identity at most one reconcile runs and at most one waits. Caches hold the newest version seen of every identity and
managed Secret — from our own watch streams and from the responses to our own writes — so a reconcile reads nothing from
the API in the common case, and an unchanged world costs no write.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from typing import Any

from . import ca as ca_mod
from . import caloss, metrics, ownership, pki, plan, policy, rotation, status, timestamps, tlssecret
from .authority import AuthorityStatus
from .bundles import TrustBundles
from .clustertrustbundle import ClusterTrustBundlePublisher
from .compact import Shared, compact
from .config import Settings
from .events import SENDERS, EventSink
from .fairness import FairQueue, RenewLimiter, RenewLimits, key_cost
from .issuer import Issuer
from .kube import ApiError, Conflict, Kube, NotFound, WatchHealth
from .rotator import KEY as ROTATION_KEY
from .rotator import RootRotator
from .scheduler import Scheduler
from .spec import GROUP, KIND, PLURAL, IdentitySpec, InvalidSpec, parse

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)
# A Secret we do not own is not watched; look again this often to notice it has gone.
CONFLICT_RECHECK = dt.timedelta(seconds=60)
MAX_BACKOFF = 300.0
# While the CA Secret is lost: how often to look for it restored, or for an approval of a new root (caloss.py).
RECOVERY_CHECK = dt.timedelta(seconds=5)
RECOVERY_KEY = ("", "ca-recovery")  # the scheduler key of that look
# A Secret write refused as such (immutable, or by admission), not as a race: retried from this, doubling, up to
# MAX_BACKOFF, with the same private key each time.
UNWRITABLE_BACKOFF = 10.0
UNWRITABLE_STATUSES = (400, 403, 422)


# A reissue whose turn at --reissue-rate is this close goes now rather than being put back in the queue.
PACE_SLACK = 0.05


class IdentityGone(Exception):
    """The identity was deleted while we worked on it: nothing to report, nothing to retry."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


def _uid(body: Mapping[str, Any]) -> str:
    return body.get("metadata", {}).get("uid", "")


def _intent(body: Mapping[str, Any]) -> tuple:
    """What a user can change about an identity that the operator must react to (not its status)."""
    meta = body.get("metadata", {})
    return (meta.get("uid"), meta.get("generation"), meta.get("labels"), meta.get("annotations"),
            meta.get("deletionTimestamp"))


class RateLimiter:
    """Spaces calls evenly: a root rotation reissues every leaf, but not all in the same second."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next = 0.0

    def reserve(self, now: float) -> float:
        """The next free moment (same clock as `now`), taken."""
        start = max(now, self._next)
        self._next = start + self.interval
        return start


class Paced(Exception):
    """A reissue waits for its turn at --reissue-rate: the identity is looked at again then, and its worker is free
    meanwhile (a newcomer must not wait behind a rotation's paced reissues)."""


class NewestCache:
    """Objects by key, keeping the newest resourceVersion seen: a late watch event never undoes our own write, and the
    response to a write that lands after the object's deletion never brings it back (deleted uids are remembered)."""

    MAX_TOMBSTONES = 10000

    def __init__(self, trim: Callable[[Mapping[str, Any]], dict[str, Any]] = compact) -> None:
        self._trim = trim  # what of an object is kept, and how
        self._items: dict[Hashable, dict[str, Any]] = {}
        self._deleted: dict[str, None] = {}  # uids, oldest first
        # (namespace, name) keys: how many per namespace, so "which namespaces hold any" is not a walk over all.
        self._per_namespace: collections.Counter[str] = collections.Counter()

    def put(self, key: Hashable, body: Mapping[str, Any]) -> None:
        if _uid(body) in self._deleted:
            return
        current = self._items.get(key)
        if current is None or _uid(current) != _uid(body) or _rv(body) > _rv(current) or not _rv(body):
            self._items[key] = self._trim(body)
            if current is None and isinstance(key, tuple):
                self._per_namespace[key[0]] += 1
        # The same uid and resourceVersion is the same object (the watch's echo of a write whose answer is cached):
        # nothing to keep anew.

    def drop(self, key: Hashable, body: Mapping[str, Any] | None = None) -> None:
        """Forgets the object; given the deleted body, only if the cached one is that object (same uid): a late
        DELETED of an old object must not remove its same-named successor."""
        if body is None:
            self._forget(key)
            return
        uid = _uid(body)
        if uid:
            self._deleted[uid] = None
            if len(self._deleted) > self.MAX_TOMBSTONES:
                del self._deleted[next(iter(self._deleted))]
        current = self._items.get(key)
        if current is not None and _uid(current) in ("", uid):
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        if self._items.pop(key, None) is not None and isinstance(key, tuple):
            self._per_namespace[key[0]] -= 1
            if not self._per_namespace[key[0]]:
                del self._per_namespace[key[0]]

    def namespaces(self) -> set[str]:
        """The namespaces of the cached objects (keyed by (namespace, name))."""
        return set(self._per_namespace)

    def get(self, key: Hashable) -> dict[str, Any] | None:
        return self._items.get(key)

    def __iter__(self):
        return iter(list(self._items))  # a snapshot: callers may change the cache while iterating

    def __len__(self) -> int:
        return len(self._items)


class Reconciler:
    def __init__(self, settings: Settings, kube: Kube, clock=utcnow) -> None:
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self.identities = NewestCache()  # (ns, name) -> MtlsIdentity
        # (ns, secretName) -> a Secret proven ours (ownership.py), only the data fields we read. Nothing else is kept.
        self._bundle_text, self._bundle_bytes = Shared(4), Shared(4)
        self.secrets = NewestCache(self._trimmed_secret)
        # (ns, secretName) -> the metadata of a Secret proven ours that start-up did not read, because the identity's
        # status records it at this very version (plan.standing). Its data is read when a reconcile needs more than
        # the metadata says; a watch event for it, or a read, ends its entry.
        self.unread: dict[Key, dict[str, Any]] = {}
        # The signing core shared with the pod-certificate signer: the CA in force, policy grants, fair slots.
        self.issuer = Issuer(settings, clock)
        self.ca_error = "the CA has not been loaded yet"
        self.scheduler = Scheduler(self.trigger, clock)
        self.scheduler.lateness = metrics.renewal_lateness.observe
        # Reconciles run on a fixed number of workers fed from a fair queue: what waits is a key, not a task.
        self._ready = FairQueue()
        self._queued: set[Hashable] = set()  # in _ready, or (the rotation's and recovery's keys) a task waiting to run
        self._running: set[Key] = set()
        self._again: set[Key] = set()  # triggered while running: queued once more when the run ends
        self._workers = 0
        self._stopped = False  # after stop(): nothing new starts (a cancelled worker's re-run included)
        self._tasks: set[asyncio.Task] = set()
        self._failures: dict[Key, int] = {}
        self._conflicted: set[Key] = set()
        self._roll_warned: dict[tuple[str, str, str, str], str] = {}
        self._blocked: set[Key] = set()  # identities whose last look ended in a refusal (policy, spec, conflict...)
        self._views: dict[Key, tuple[tuple[str, str], tlssecret.SecretView]] = {}
        # Secrets (ns, name) with a write of ours in flight -> the newest watch event that came meanwhile (or None). The
        # watch often shows our write before its response arrives: judged then, it would look like someone else's
        # change (a GET and a second reconcile); judged after the response is cached, it is plainly our echo.
        self._writing: dict[Key, dict[str, Any] | None] = {}
        self._specs: dict[Key, tuple[tuple[str, int], IdentitySpec | InvalidSpec]] = {}
        # identity -> (uid, generation) whose status the API server refuses: a recreated object of the same name (its
        # deletion perhaps unseen while a watch was down) has another uid, and starts afresh.
        self._unwritable: dict[Key, tuple[str, int]] = {}
        self._refused_writes: dict[Key, int] = {}  # identity -> Secret writes refused in a row (SecretUnwritable)
        # identity -> a key made for a write that was refused: it never left this process, so the retry reuses it
        # instead of making a new one each time.
        self._spare_keys: dict[Key, pki.PrivateKey] = {}
        self.ca_loss: caloss.Evidence | None = None  # set while the CA Secret is lost and its root is in use
        self.service_accounts: set[Key] = set()
        self._by_service_account: dict[Key, set[Key]] = {}  # (ns, sa) -> identities naming it
        # Renew requests rate-limited per identity and namespace: one namespace's spam of the renew annotation must
        # not starve another's issuance (fairness.py; the signing slots are the issuer's).
        self.renew_limiter = RenewLimiter(RenewLimits(
            identity_burst=settings.renew_burst, identity_interval=settings.renew_interval.total_seconds(),
            namespace_burst=settings.renew_namespace_burst,
            namespace_interval=settings.renew_namespace_interval.total_seconds()))
        self._deferred: set[Key] = set()  # identities whose renew request waits for a token (an Event was posted)
        self._reissue_rate = RateLimiter(settings.reissue_rate)
        self._paced: dict[Key, float] = {}  # identity -> its reserved turn for a reissue (loop time)
        # Our own list-and-watch streams: (what, namespace or None for cluster-wide) -> its health.
        self._watches: dict[tuple[str, str | None], WatchHealth] = {}
        # Events queue behind every other call (events.py), bounded and fair across namespaces.
        self.events = EventSink(lambda event: self.kube.post_event(event), self.spawn, clock,
                                senders=max(1, min(SENDERS, settings.api_workers // 4)))
        metrics.events_waiting.set_function(self.events.queue.__len__)  # the queue only: not this whole Reconciler
        self.ca_secret: dict[str, Any] | None = None  # the CA Secret as last loaded (valid)
        self.bundles = TrustBundles(kube, settings.bundle_configmap, settings.bundle_namespaces,
                                    bundle=lambda: self.ca.bundle_pem if self.ca else None,
                                    identity_namespaces=self.identities.namespaces,
                                    spawn=self.spawn)
        # The pod-certificate signer's ClusterTrustBundle, when that signer serves (handlers.py sets it): a root
        # rotation waits for it like for the ConfigMaps, and keeps the old root until its pod certificates expire.
        self.cluster_bundle: ClusterTrustBundlePublisher | None = None
        self.authority = AuthorityStatus(kube, settings, clock, self,
                                         waiting=lambda: (self.rotator.waiting_reason, self.rotator.waiting))
        self.rotator = RootRotator(self, rotation.Timing(
            rotate_before=settings.ca_rotate_before, propagation=settings.ca_propagation, grace=settings.ca_grace,
            stall=settings.ca_stall))

    @property
    def ca(self) -> ca_mod.CA | None:
        return self.issuer.ca

    @ca.setter
    def ca(self, value: ca_mod.CA | None) -> None:
        self.issuer.ca = value

    @property
    def policies(self) -> dict[str, policy.Rule]:
        return self.issuer.policies

    # ---- inputs from the watches ----

    def identity_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            self.identities.drop(key, body)
            if self.identities.get(key) is not None:
                return  # a successor of the same name is already here
            self.scheduler.cancel(key)
            self._failures.pop(key, None)
            self._conflicted.discard(key)
            self._unwritable.pop(key, None)
            self._refused_writes.pop(key, None)
            self._spare_keys.pop(key, None)
            self._paced.pop(key, None)
            self._blocked.discard(key)
            self.renew_limiter.forget(key)
            self._deferred.discard(key)
            parsed = self._specs.pop(key, (None, None))[1]
            if isinstance(parsed, IdentitySpec):
                self._views.pop((parsed.namespace, parsed.secret_name), None)
                self._by_service_account.get((parsed.namespace, parsed.service_account), set()).discard(key)
            metrics.identities.forget(key)
            return
        previous = self.identities.get(key)
        self.identities.put(key, body)
        if self.settings.bundle_configmap and key[0] not in self.bundles.maps:
            self.spawn(self.bundles.ensure(key[0]))  # the namespace's first identity: publish its trust bundle
        if event_type is not None and previous is not None and _intent(previous) == _intent(body):
            return  # only the status changed (our own write, as a rule): nothing to decide
        self.trigger(key, urgent=event_type is not None)  # a user's change; the start-up listing (None) is routine

    def identities_listed(self, namespace: str | None, bodies: list[dict[str, Any]]) -> None:
        """A fresh list after the watch broke off: what is gone from it was deleted meanwhile; the rest counts as
        changed where it did change."""
        present = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bodies}
        for key in self.identities:
            known = self.identities.get(key)
            if known is not None and (namespace is None or key[0] == namespace) and key not in present:
                self.identity_event("DELETED", known)
        for body in bodies:
            self.identity_event("MODIFIED", body)

    def proven_owner(self, secret: Mapping[str, Any]) -> Key | None:
        """The identity that owns this Secret by proof (ownership.py), or None: a label and a claim prove nothing."""
        claim = ownership.claimed_owner(secret)
        if claim is None:
            return None
        key = (claim[0], claim[1])
        identity = self.identities.get(key)
        spec = self._spec(key, identity) if identity is not None else None
        secret_name = spec.secret_name if isinstance(spec, IdentitySpec) else None
        return key if ownership.proves(secret, identity, secret_name) else None

    def secret_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A change of a labelled Secret, as metadata only (kube.watch): the data of a Secret proven ours is
        fetched by name; any other Secret costs a glance at its metadata and is forgotten."""
        meta = body["metadata"]
        skey = (meta["namespace"], meta["name"])
        unread = self.unread.get(skey)
        if unread is not None:
            if event_type == "DELETED":
                if _uid(unread) == _uid(body):
                    del self.unread[skey]
                    self._trigger_claimed(unread)
            elif _uid(unread) == _uid(body) and _rv(unread) >= _rv(body):
                return  # as start-up listed it
            elif self.proven_owner(body) is None:
                del self.unread[skey]
                self._trigger_claimed(unread)
            else:
                # Changed: its newer metadata stands in until the read below lands. At a version the status does not
                # record, it is never taken as written: a reconcile meanwhile reads it, the rotation counts it as
                # stale, and the CA-loss evidence still sees whose it is.
                self.unread[skey] = compact({"metadata": meta})
        known = self.secrets.get(skey)
        if event_type == "DELETED":
            self.secrets.drop(skey, body)
            if known is not None and _uid(known) == _uid(body):
                self._trigger_claimed(known)
            return
        if skey in self._writing:
            self._writing[skey] = dict(body)  # looked at when the write's answer is in (_write)
            return
        owner = self.proven_owner(body)
        if owner is None:
            if known is not None and _uid(known) == _uid(body):
                self.secrets.drop(skey)  # ours no longer (its reference edited, or the identity names another Secret)
                self._trigger_claimed(known)
            return
        if known is not None and _uid(known) == _uid(body) and _rv(known) >= _rv(body):
            return  # the echo of our own write (its response is already cached): nothing new
        self.spawn(self._fetch_secret(skey, owner, meta.get("resourceVersion", "")))

    def secrets_listed(self, namespace: str | None, bodies: list[dict[str, Any]]) -> None:
        """A fresh list after the watch broke off: what is gone from it was deleted meanwhile."""
        present = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bodies}
        for skey in list(self.unread):
            if (namespace is None or skey[0] == namespace) and skey not in present:
                self._trigger_claimed(self.unread.pop(skey))
        for skey in self.secrets:
            if (namespace is None or skey[0] == namespace) and skey not in present:
                known = self.secrets.get(skey)
                self.secrets.drop(skey)
                if known is not None:
                    self._trigger_claimed(known)
        for body in bodies:
            self.secret_event("ADDED", body)

    def proven_secrets(self, bodies: list[dict[str, Any]]) -> list[tuple[Key, str]]:
        """Of these labelled Secrets (metadata), the ones proven ours and to be read: start-up keeps their keys and
        the versions listed, page by page, and nothing else of the list. One whose identity's status records it at
        the version listed is unchanged since this operator wrote it: its metadata is kept (self.unread), not read."""
        out = []
        for b in bodies:
            owner = self.proven_owner(b)
            if owner is None:
                continue
            meta = b["metadata"]
            skey = (meta["namespace"], meta["name"])
            version = meta.get("resourceVersion", "")
            recorded = ((self.identities.get(owner) or {}).get("status") or {}).get("secretResourceVersion")
            if version and recorded == version:
                self.unread[skey] = compact({"metadata": meta})
            else:
                out.append((skey, version))
        return out

    async def prefill_secrets(self, pages: AsyncIterator[list[tuple[Key, str]]]) -> None:
        """Start-up: the data of the Secrets proven ours (proven_secrets, a page of the metadata list at a time), one
        GET each, bounded by the API's calls in flight; a look-alike's data is never fetched. The reads of one page
        run while the next page is listed; the queue holds only keys, so the listing never waits for the reads (its
        continue token must not age). A reader or the listing failing ends it all: start-up is tried again."""
        queue: asyncio.Queue[tuple[Key, str] | None] = asyncio.Queue()

        async def fetcher() -> None:  # as many as the API serves at once: not one suspended task per Secret
            while (item := await queue.get()) is not None:
                await self._fetch_secret(item[0], None, item[1])

        async with asyncio.TaskGroup() as group:
            for _ in range(self.settings.api_workers):
                group.create_task(fetcher())
            async for items in pages:
                for item in items:
                    queue.put_nowait(item)
            for _ in range(self.settings.api_workers):
                queue.put_nowait(None)

    async def _read_secret(self, skey: Key, seen_version: str) -> dict[str, Any] | None:
        """A Secret at the version seen in its metadata or newer (the API server's watch cache answers: no etcd
        read); None if it is gone. Raises what the API or the network raised."""
        try:
            return await self.kube.get_secret(*skey, not_older_than=seen_version)
        except ApiError as e:
            if not seen_version or isinstance(e, NotFound):
                raise
            # The cache is behind that version (a 504 after the server's wait: several API servers, a starved
            # one): the latest, from etcd, rather than deciding on what was cached before the change.
            log.debug("Secret %s/%s not served at version %s (%s): reading the latest", *skey, seen_version, e)
            return await self.kube.get_secret(*skey)

    def _cache_read(self, skey: Key, body: dict[str, Any] | None) -> Key | None:
        """Keeps a Secret just read if it is proven ours (and returns its owner); either way the read replaces what
        was known of it by metadata."""
        self.unread.pop(skey, None)
        proven = self.proven_owner(body) if body is not None else None
        if proven is not None:
            self.secrets.put(skey, body)
        return proven

    async def _fetch_secret(self, skey: Key, owner: Key | None, seen_version: str) -> None:
        """Reads a Secret proven ours by its metadata (start-up, or a change the watch showed)."""
        try:
            body = await self._read_secret(skey, seen_version)
        except (ApiError, OSError, TimeoutError) as e:
            # What was known of it by metadata stays (the reconcile reads it itself); a Secret never known is read by
            # the reconcile when its write conflicts.
            log.warning("could not read Secret %s/%s: %s", *skey, e)
            if owner is not None:
                self.trigger(owner, urgent=True)
            return
        proven = self._cache_read(skey, body)
        if proven is not None:
            identity = self.identities.get(proven)
            if owner is None and identity is not None:
                # Start-up: parsed now, between the other reads (the API server's turn), rather than after them all
                # in the reconciles the CA's first load starts, when the API server idles and this process is the
                # bound. The reconcile finds it parsed (_view: once per resourceVersion). Tenants write these
                # Secrets: whatever the parse meets is the reconcile's to report for that identity alone, never a
                # failed start-up for all.
                try:
                    self._view(skey, self.secrets.get(skey), identity["metadata"]["uid"])
                except Exception as e:  # the reconcile parses it again, inside its own error handling
                    log.warning("Secret %s/%s could not be parsed at start-up: %s", *skey, type(e).__name__)
        if owner is not None:
            self.trigger(owner, urgent=True)  # its Secret was changed by someone else: heal it first

    def _trigger_claimed(self, secret: Mapping[str, Any]) -> None:
        claim = ownership.claimed_owner(secret)
        if claim is not None:
            self.trigger((claim[0], claim[1]), urgent=True)  # its Secret went away or changed hands

    def service_account_event(self, event_type: str | None, body: Mapping[str, Any], startup: bool = False) -> None:
        """`startup`: listed before the CA's first load, which looks at every identity anyway; triggering the
        account's identities here too had every one of them reconciled twice at a restart, once without a CA."""
        sa = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            self.service_accounts.discard(sa)
        elif sa not in self.service_accounts:
            self.service_accounts.add(sa)
        else:
            return  # an update of a known account changes nothing here
        if startup:
            return
        for key in self._by_service_account.get(sa, ()):
            self.trigger(key)

    def policy_event(self, event_type: str | None, body: Mapping[str, Any], startup: bool = False) -> None:
        """`startup`: as for service_account_event."""
        name = body["metadata"]["name"]
        old = self.policies.pop(name, None)
        if event_type != "DELETED":
            try:
                self.policies[name] = policy.parse_rule(body)
            except policy.InvalidPolicy as e:
                # Ignored, so it grants nothing: denying is the safe side of a broken policy.
                log.error("%s; it is ignored", e)
                self.post_event(body, "MtlsIdentityPolicy", "Warning", "InvalidPolicy", f"{e}; it is ignored")
        new = self.policies.get(name)
        if old != new and not startup:
            touched = (old.namespaces if old else frozenset()) | (new.namespaces if new else frozenset())
            for key in self.identities:
                if key[0] in touched:
                    self.trigger(key)

    async def _admission(self, spec: IdentitySpec) -> tuple[str, str] | None:
        """Zero-trust checks before anything is issued: (reason, message) when the identity may not have its names."""
        sa = (spec.namespace, spec.service_account)
        # The account may be newer than our watch has shown (created just before the identity): ask once before
        # refusing, rather than report a false ServiceAccountNotFound.
        if (self.settings.require_service_account and sa not in self.service_accounts
                and await self.kube.get_service_account(*sa) is not None):
            self.service_accounts.add(sa)
        if self.settings.require_service_account and sa not in self.service_accounts:
            return (status.Ready.SERVICE_ACCOUNT_NOT_FOUND,
                    f"ServiceAccount {spec.namespace}/{spec.service_account} does not exist; the SPIFFE ID "
                    f"{spec.spiffe_id} would name no workload")
        denial = self.issuer.check_names(spec.namespace, spec.dns_names, spec.ip_addresses)
        return (status.Ready.POLICY_DENIED, denial) if denial else None

    def trigger_all(self) -> None:
        for key in self.identities:
            self.trigger(key)

    def trigger(self, key: Hashable, urgent: bool = False) -> None:
        """Asks for a reconcile of one identity (or, for the rotation's key, a look at the CA's rotation); a no-op
        when one is already waiting to run. `urgent`: a user's own change, served before routine work of the same
        namespace (fairness.FairQueue)."""
        if key in self._queued or self._stopped:
            return
        self._queued.add(key)
        if key in (ROTATION_KEY, RECOVERY_KEY):
            self.spawn(self._rotation_check() if key == ROTATION_KEY else self._recovery_check())
            return
        self._ready.put(key, urgent)
        while self._workers < self.settings.reconcile_workers:
            self._workers += 1
            self.spawn(self._worker())

    async def _worker(self) -> None:
        """Takes identities off the fair queue for as long as the process serves. One identity is never reconciled
        by two workers at once: a key taken while it runs is run once more after."""
        try:
            while True:
                key = await self._ready.get()
                self._queued.discard(key)  # from here on, a new trigger queues one more run
                if key in self._running:
                    self._again.add(key)
                    continue
                self._running.add(key)
                try:
                    await self._run(key)
                finally:
                    self._running.discard(key)
                    if key in self._again:
                        self._again.discard(key)
                        self.trigger(key)
        finally:
            self._workers -= 1

    # ---- the CA ----

    async def bootstrap_ca(self) -> None:
        """Loads the CA Secret, creating it first if there is none: a self-signed root, or (--ca-mode intermediate)
        an intermediate signed by a root kept in <name>-root. Create-if-absent: of two operators starting together,
        one POST wins and the other reads the winner's."""
        s = self.settings
        body = await self.kube.get_secret(s.ca_namespace, s.ca_secret_name)
        if body is None and not (s.ca_mode == "intermediate" and await self.kube.get_secret(
                s.ca_namespace, f"{s.ca_secret_name}-root") is not None):
            # A new root (not just a new intermediate under a surviving root) changes what peers trust: never while
            # the cluster shows another one in use.
            evidence = await self._loss_evidence()
            if evidence.in_use:
                await self.ca_changed(None, startup=True)
                return
        if body is None:
            if s.ca_mode == "intermediate":
                root = await self._create_if_absent(f"{s.ca_secret_name}-root", "root",
                                                    lambda: ca_mod.new_root(s, self.clock()))
                root_data = tlssecret.decode_data(root)
                body = await self._create_if_absent(s.ca_secret_name, "intermediate",
                                                    lambda: ca_mod.new_intermediate(root_data, s, self.clock()))
            else:
                body = await self._create_if_absent(s.ca_secret_name, "root", lambda: ca_mod.new_root(s, self.clock()))
        await self.ca_changed(body, startup=True)

    async def _create_if_absent(self, name: str, role: str, make,
                                annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        s = self.settings
        existing = await self.kube.get_secret(s.ca_namespace, name)
        if existing is not None:
            return existing
        data = make()
        made = pki.fingerprint(pki.load_chain(data["tls.crt"])[0])
        new = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": s.ca_namespace,
                         "labels": {"app.kubernetes.io/name": "mtls-operator", rotation.MANAGED_LABEL: role},
                         "annotations": {rotation.ANN_MADE: made, **(annotations or {})}},
            "data": {k: tlssecret.b64(v) for k, v in data.items()},
        }
        try:
            created = await self.kube.create_secret(new)
            log.info("created the %s CA in Secret %s/%s", role, s.ca_namespace, name)
            return created
        except Conflict:
            return await self.kube.get_secret(s.ca_namespace, name) or {}

    def start_ca_watch(self) -> None:
        s = self.settings

        def on_change(body: dict[str, Any] | None) -> None:
            self.spawn(self.ca_changed(body))

        self.spawn(self.kube.watch_one(self.kube.secret_paths((s.ca_namespace,))[0], s.ca_secret_name, on_change))

    def start_identity_watch(self, path: str, version: str) -> None:
        """The MtlsIdentities under one path, whole, from the start-up list's version. Our own watch rather than kopf's:
        each event is handed straight to identity_event, without kopf's per-event machinery (per-object worker task and
        memory, loggers, cause detection, handler invocation, patch application) that a raw event handler never uses —
        about a sixth of the operator's CPU per identity, and per-object state held for every identity."""
        self._start_watch(path, version, self.identity_event, self.identities_listed, f"{PLURAL}.{GROUP}", "",
                          metadata_only=False)

    def start_secret_watch(self, path: str, version: str) -> None:
        """The labelled Secrets under one path, metadata only (kube.watch), from the start-up list's version.
        kopf's watch would hand every look-alike's whole body to this process (and hold it while its worker idles)."""
        self._start_watch(path, version, self.secret_event, self.secrets_listed, "secrets",
                          tlssecret.MANAGED_SELECTOR, metadata_only=True)

    def _start_watch(self, path: str, version: str, on_event: Callable[[str, dict[str, Any]], None],
                     on_listed: Callable[[str | None, list[dict[str, Any]]], None], what: str, label_selector: str,
                     metadata_only: bool) -> None:
        """A list-and-watch on the event loop (kube.watch), each event and each re-list handed straight to its
        handler; its health is kept for unwatched()."""
        namespace = path.split("/namespaces/", 1)[1].split("/", 1)[0] if "/namespaces/" in path else None
        health = self._watches[(what, namespace)] = WatchHealth()
        self.spawn(self.kube.watch(path, version, on_event, functools.partial(on_listed, namespace),
                                   label_selector=label_selector, metadata_only=metadata_only, health=health))

    def unwatched(self) -> tuple[str, ...]:
        """What this reconciler watches itself and cannot, with the last error (for /readyz): a resource counts as
        unwatched when its cluster-wide stream is down, or, with --namespace, when every namespace's is. One
        tenant who breaks its own namespace's stream (deletes the operator's RoleBinding there) must not make the
        leader unready for everyone; that namespace's failure is logged by its watch."""
        streams: dict[str, list[str | None]] = {}
        for (what, _namespace), health in list(self._watches.items()):
            streams.setdefault(what, []).append(health.problem)
        return tuple(f"{what} ({problems[0]})" for what, problems in streams.items()
                     if all(problem is not None for problem in problems))

    def stop(self) -> None:
        """No more writes from this process (shutdown, or the lease is lost): cancel every reconcile in flight."""
        self._stopped = True
        self.events.close()
        for task in list(self._tasks):
            task.cancel()

    async def ca_changed(self, body: Mapping[str, Any] | None, startup: bool = False) -> None:
        s = self.settings
        where = f"{s.ca_namespace}/{s.ca_secret_name}"
        current = self.ca_secret
        if body is not None and current is not None and _uid(body) == _uid(current) and _rv(body) < _rv(current):
            return  # an older version than the one we wrote ourselves (the watch lags behind a rotation step)
        try:
            if body is None:
                raise ca_mod.CAError(f"CA Secret {where} does not exist")
            new = ca_mod.load(tlssecret.decode_data(body), self.clock())
        except ca_mod.CAError as e:
            message = f"CA Secret {where} is unusable: {e}; nothing will be issued until it is fixed"
            loss = await self._loss_evidence() if body is None else caloss.NONE
            if loss.in_use:
                message = caloss.message(loss, where, self.authority.name)
                self.scheduler.schedule(RECOVERY_KEY, self.clock() + RECOVERY_CHECK)
            if message != self.ca_error or startup:
                log.error(message)
                if body is not None:
                    self.post_event(body, "Secret", "Warning", "CAInvalid", message)
                elif loss.in_use:
                    self.post_event(self._authority_ref(), "MtlsAuthority", "Warning", "CALost", message)
            self.ca_loss = loss if loss.in_use else None
            metrics.ca_lost.set(1 if loss.in_use else 0)
            self.ca, self.ca_error = None, message
            metrics.ca_ready.set(0)
            self.trigger_all()
            self.spawn(self.authority.publish())
            return
        old = self.ca
        legacy = caloss.legacy_roots(new, body["metadata"].get("annotations") or {})
        if legacy:
            new = dataclasses.replace(new, legacy_roots=legacy)
        if self.ca_loss is not None:
            log.info("CA Secret %s is back: the lost-root state is over", where)
        self.ca, self.ca_error, self.ca_secret, self.ca_loss = new, "", dict(body), None
        metrics.ca_lost.set(0)
        metrics.ca_ready.set(1)
        metrics.ca_expiry.set(new.not_after.timestamp())
        if (old is None or old.fingerprint != new.fingerprint or old.bundle_pem != new.bundle_pem
                or old.legacy_roots != new.legacy_roots):
            log.info("issuing CA %s (%s), valid until %s", new.cert.subject.rfc4514_string(), new.fingerprint[:16],
                     new.not_after.isoformat())
            self.trigger_all()
            if self.settings.bundle_configmap:
                self.bundles.ensure_all()
            self.issuer.changed()
        self.trigger(ROTATION_KEY)
        self.spawn(self.authority.publish())

    def _authority_ref(self) -> dict[str, Any]:
        """The MtlsAuthority as an Event's involved object (cluster-scoped; Events about it land in `default`)."""
        return {"apiVersion": f"{GROUP}/v1alpha1", "metadata": {"name": self.authority.name}}

    async def _loss_evidence(self) -> caloss.Evidence:
        """What the cluster shows of the root that was in use (caloss.gather); the MtlsAuthority read is best effort."""
        s = self.settings
        try:
            authority = await self.kube.get_authority(self.authority.name)
        except ApiError as e:
            log.warning("could not read MtlsAuthority %s: %s", self.authority.name, e)
            authority = None
        if self.unread:  # the anchors are in their data (ca.crt): read them first
            await self.prefill_secrets(self._unread_pages())
        bodies = [b for b in (self.secrets.get(k) for k in self.secrets) if b]
        # Those whose read failed still show, by their annotations, that a root is in use.
        bodies.extend(self.unread.values())
        return caloss.gather(bodies, authority, f"{s.ca_namespace}/{s.ca_secret_name}", self.ca, self.clock())

    async def _unread_pages(self) -> AsyncIterator[list[tuple[Key, str]]]:
        yield [(skey, meta["metadata"].get("resourceVersion", "")) for skey, meta in list(self.unread.items())]

    async def _recovery_check(self) -> None:
        """While the CA is lost: is its Secret back, or is a new root approved? Looked at every RECOVERY_CHECK."""
        self._queued.discard(RECOVERY_KEY)
        if self.ca_loss is None:
            return
        s = self.settings
        try:
            body = await self.kube.get_secret(s.ca_namespace, s.ca_secret_name)
            if body is None:
                authority = await self.kube.get_authority(self.authority.name)
                annotations = ((authority or {}).get("metadata") or {}).get("annotations") or {}
                if not caloss.approved(self.ca_loss, annotations):
                    self.scheduler.schedule(RECOVERY_KEY, self.clock() + RECOVERY_CHECK)
                    return
                data, extra = caloss.recovery_data(self.ca_loss, s, self.clock())
                log.warning("a new root was approved (%s=%s): minting it, %d old trust anchor(s) kept in the bundles",
                            caloss.ANN_APPROVE, annotations.get(caloss.ANN_APPROVE), len(self.ca_loss.anchors))
                body = await self._create_if_absent(s.ca_secret_name, "root", lambda: data, extra)
                self.post_event(self._authority_ref(), "MtlsAuthority", "Normal", "NewRootApproved",
                            f"a new root replaces the lost one; {len(self.ca_loss.anchors)} old trust anchor(s) stay "
                            "in every bundle until the rotation phases finish")
        except ApiError as e:
            log.warning("CA recovery check failed: %s", e)
            self.scheduler.schedule(RECOVERY_KEY, self.clock() + RECOVERY_CHECK)
            return
        await self.ca_changed(body)

    async def _rotation_check(self) -> None:
        self._queued.discard(ROTATION_KEY)
        try:
            await self.rotator.check()
        except Exception as e:  # a failed step is retried by the rotation's timer
            log.warning("CA rotation check failed: %s", e)
            self.scheduler.schedule(ROTATION_KEY, self.clock() + dt.timedelta(seconds=5))

    # ---- one reconcile ----

    async def _run(self, key: Key) -> None:
        body = self.identities.get(key)
        if body is None:
            return
        started = time.perf_counter()
        try:
            await self._reconcile(key, body)
            self._failures.pop(key, None)
        except IdentityGone:
            log.debug("%s/%s was deleted while being reconciled", *key)
        except Paced:
            pass  # scheduled for its turn
        except Exception as e:
            try:
                await self._failed(key, e)
            except Exception as report:  # a worker must outlive any one identity's trouble
                log.warning("could not handle the failure of %s/%s: %s", *key, report)
        finally:
            metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _failed(self, key: Key, error: Exception) -> None:
        count = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(2.0 ** (count - 1), MAX_BACKOFF)
        log.warning("reconcile of %s/%s failed (attempt %d, retry in %.0fs): %s", *key, count, delay, error)
        metrics.failures.labels(status.Ready.ISSUANCE_FAILED).inc()
        self.scheduler.schedule(key, self.clock() + dt.timedelta(seconds=delay))
        body = self.identities.get(key)
        if body is not None:
            message = f"{type(error).__name__}: {error}"[:512]
            try:
                await self._report_failure(body, status.Ready.ISSUANCE_FAILED, message)
            except IdentityGone:
                pass
            except ApiError as e:
                log.warning("could not report the failure of %s/%s: %s", *key, e)

    async def _reconcile(self, key: Key, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return
        spec = self._spec(key, body)
        if isinstance(spec, InvalidSpec):
            self.scheduler.cancel(key)
            await self._report_failure(body, status.Ready.INVALID_SPEC, str(spec))
            return
        refused = await self._admission(spec)
        if refused:
            # Nothing is issued; a certificate already in the Secret stays (it is not renewed). The admission inputs
            # (ServiceAccounts, policies) are watched, so a fix triggers the next look.
            self.scheduler.cancel(key)
            await self._report_failure(body, *refused)
            return
        for _attempt in range(3):
            skey = (spec.namespace, spec.secret_name)
            secret = self.secrets.get(skey)
            unread = self.unread.get(skey) if secret is None else None
            if unread is not None:
                if self._stands(key, body, spec, unread):
                    return
                # Read before deciding (a failed read fails this reconcile, retried with backoff): deciding without
                # it would take the Secret for missing and sign for a create that cannot land.
                self._cache_read(skey, await self._read_secret(skey, unread["metadata"].get("resourceVersion", "")))
                secret = self.secrets.get(skey)
            if secret is None and key in self._conflicted:
                secret = await self.kube.get_secret(*skey)
            view = self._view(skey, secret, meta["uid"])
            try:
                await self._act(key, body, spec, view)
                return
            except (Conflict, NotFound) as e:
                # Someone wrote the Secret between our read and our write (or it exists but is not in our watch):
                # read it fresh and decide again.
                log.debug("secret %s/%s changed under us (%s); deciding again", *skey, e.reason)
                fresh = await self.kube.get_secret(*skey)
                self.unread.pop(skey, None)
                if fresh is not None and self.proven_owner(fresh) == key:
                    self.secrets.put(skey, fresh)
                elif fresh is not None:
                    self._conflicted.add(key)
                else:
                    self.secrets.drop(skey)
        raise RuntimeError(f"Secret {spec.secret_name} kept changing while being written")

    def as_written(self, unread: Mapping[str, Any]) -> bool:
        """Whether a Secret known by metadata is at the version its owner's status records: its annotations then
        describe its data (plan.standing)."""
        owner = self.proven_owner(unread)
        recorded = ((self.identities.get(owner) or {}).get("status") or {}).get("secretResourceVersion") \
            if owner is not None else None
        return bool(recorded) and recorded == unread["metadata"].get("resourceVersion")

    def _stands(self, key: Key, body: dict[str, Any], spec: IdentitySpec, unread: Mapping[str, Any]) -> bool:
        """The end of a reconcile that _act would end with nothing to write (plan.standing), for a Secret start-up
        did not read: its gauges and its next look. False: its data must be read."""
        ca = self.ca
        if ca is None or self.proven_owner(unread) != key:
            return False
        found = plan.standing(spec, unread["metadata"], body, ca, self.clock())
        if found is None:
            return False
        self._conflicted.discard(key)
        self._blocked.discard(key)
        self._gauge(key, True, found.not_after.timestamp(), found.renewal_time.timestamp())
        self.scheduler.schedule(key, found.renewal_time)
        return True

    async def _act(self, key: Key, body: dict[str, Any], spec: IdentitySpec, view: tlssecret.SecretView) -> None:
        now = self.clock()
        ca = self.ca
        if ca is None:
            await self._without_ca(key, body, spec, view, now)
            return
        renew_request = (body["metadata"].get("annotations") or {}).get(tlssecret.ANN_RENEW_REQUEST, "")
        decision = plan.decide(spec, view, ca, now, renew_request)
        deferred: tuple[dt.datetime, str] | None = None
        if decision.reason is plan.Reason.REQUESTED:
            decision, deferred = self._admit_renew_request(key, body, spec, view, ca, now, renew_request, decision)

        if decision.action is plan.Action.CONFLICT:
            self._conflicted.add(key)
            self.scheduler.schedule(key, now + CONFLICT_RECHECK)
            await self._report_failure(body, status.Ready.SECRET_CONFLICT, decision.message)
            return
        self._conflicted.discard(key)
        if decision.action is plan.Action.UNWRITABLE:
            await self._secret_unwritable(key, body, spec, view, decision.message)
            return

        written = ""
        try:
            if decision.action is plan.Action.ISSUE:
                cert, renewal, revision, written = await self._issue(body, spec, view, decision, ca)
            else:
                assert view.cert is not None
                cert, renewal, revision = view.cert, decision.renewal_time, view.revision
                if decision.action is plan.Action.REFRESH:
                    annotations = {k: v for k, v in view.annotations.items() if k.startswith(GROUP + "/")}
                    # A lost root's leaf kept through a recovery keeps the chain it came with.
                    ours = view.issued_by(ca.cert)
                    chain = ca.chain_pem() if ours else view.chain_pem
                    version = await self._write(spec, body, view, tlssecret.build(
                        spec, body["metadata"]["uid"], cert, view.private_key(), chain, ca.bundle_pem, annotations,
                        view.resource_version))
                    # The record of issuance is carried over from the Secret as read, which its tenant can edit; it
                    # was checked against the certificate only when that is the CA's own (plan.decide). A lost
                    # root's leaf is not recorded as written: a restart reads it (plan.standing).
                    written = version if ours else ""
        except ApiError as e:
            if isinstance(e, (Conflict, NotFound)) or e.status not in UNWRITABLE_STATUSES:
                raise
            await self._secret_unwritable(key, body, spec, view, f"the API server refused to write Secret "
                                          f"{spec.secret_name} ({e.status} {e.reason}: {e.message})")
            return
        self._refused_writes.pop(key, None)

        self._blocked.discard(key)
        next_look = renewal
        if spec.restart_targets:  # before the status: once it shows the new certificate, the roll is decided
            retry = await self._roll_workloads(body, spec, cert, now)
            next_look = min(x for x in (renewal, retry) if x) if (renewal or retry) else None
        if deferred is not None and decision.action is not plan.Action.ISSUE:
            next_look = min(next_look or deferred[0], deferred[0])  # the request is served when a token is due
        desired = status.healthy(body.get("status") or {}, spec.secret_name, spec.spiffe_id, cert, renewal, revision,
                                 ca.fingerprint, body["metadata"].get("generation", 0), now, written)
        if deferred is not None and decision.action is not plan.Action.ISSUE:
            ready = desired["conditions"][0]
            ready["message"] = (f"{ready['message']}; a renewal request ({tlssecret.ANN_RENEW_REQUEST}) is deferred by "
                                f"the per-{deferred[1]} rate limit until {timestamps.text(deferred[0])}")
        await self._set_status(key, body, desired)
        self._gauge(key, True, cert.not_valid_after_utc.timestamp(), renewal.timestamp() if renewal else None)
        if next_look:
            self.scheduler.schedule(key, next_look)
        else:
            self.scheduler.cancel(key)

    async def _secret_unwritable(self, key: Key, body: dict[str, Any], spec: IdentitySpec,
                                 view: tlssecret.SecretView, why: str) -> None:
        """The Secret cannot be written as it stands (immutable, or refused by admission): SecretUnwritable, saying how
        to recover; the identity is left out of rotation waits (_blocked) and looked at again with a growing backoff.
        Deleting the Secret, or any change to it, triggers a look at once."""
        count = self._refused_writes[key] = self._refused_writes.get(key, 0) + 1
        delay = min(UNWRITABLE_BACKOFF * 2 ** (count - 1), MAX_BACKOFF)
        now = self.clock()
        cert = view.cert if view.owned else None
        left = (f"the certificate in it is valid until {timestamps.text(cert.not_valid_after_utc)} and will not be "
                f"renewed" if cert is not None and cert.not_valid_after_utc > now else "it holds no valid certificate")
        message = (f"{why}; {left}. Recover: delete the Secret (kubectl delete secret -n {spec.namespace} "
                   f"{spec.secret_name}), and the operator recreates it at once; or lift the admission rule that "
                   f"refuses the write. Retried with backoff (up to {MAX_BACKOFF:.0f}s), with the same key")
        if count == 1:
            log.error("%s/%s: %s", *key, message)
        self.scheduler.schedule(key, now + dt.timedelta(seconds=delay))
        await self._report_failure(body, status.Ready.SECRET_UNWRITABLE, message)

    def _admit_renew_request(self, key: Key, body: dict[str, Any], spec: IdentitySpec, view: tlssecret.SecretView,
                             ca: ca_mod.CA, now: dt.datetime, renew_request: str, decision: plan.Decision
                             ) -> tuple[plan.Decision, tuple[dt.datetime, str] | None]:
        """A renew request goes ahead only with a token from the identity's and the namespace's buckets. Otherwise it is
        deferred, not lost: the identity is decided on as if no request were pending (a due or broken certificate is
        still reissued, and that serves the request too), one Event says so per deferral, and the caller schedules a
        look for when the token is due — the newest annotation value is then served."""
        clock = now.timestamp()
        if len(self.renew_limiter) > 4096:
            self.renew_limiter.prune(clock)
        cost = key_cost(spec.key.label, not decision.reuse_key)
        wait, which = self.renew_limiter.admit(key[0], key, clock, cost)
        if not wait:
            self._deferred.discard(key)
            return decision, None
        # Whole seconds, rounded up: while nothing is taken the bucket's due time stays put, so repeated requests yield
        # the same status and no extra writes.
        until = dt.datetime.fromtimestamp(int(clock + wait) + 1, dt.UTC)
        if key not in self._deferred:
            self._deferred.add(key)
            metrics.renew_deferred.labels(which).inc()
            self.post_event(body, KIND, "Warning", "RenewalDeferred",
                        f"renewal request {renew_request!r} exceeds the per-{which} rate limit; it will be served at "
                        f"{timestamps.text(until)} (the current certificate stays in place)")
        return plan.decide(spec, view, ca, now, ""), (until, which)

    async def _roll_workloads(self, body: dict[str, Any], spec: IdentitySpec, cert: Any,
                              now: dt.datetime) -> dt.datetime | None:
        """Rolls each restart target whose pods do not have this certificate yet (level-triggered: the serial is
        recorded in the pod template), at most once per restart_min_interval; returns when to come back for a roll
        that had to wait. Pods restarting never feeds back into issuance, so this cannot loop."""
        # The marker covers the bundle too: a root rotation changes ca.crt under the same certificate, and an
        # application that cannot reload must restart to trust the new root.
        bundle = hashlib.sha256(self.ca.bundle_pem).hexdigest()[:12] if self.ca else ""
        serial, retry = f"{pki.serial_hex(cert)}.{bundle}", None
        for kind, name in spec.restart_targets:
            try:
                workload = await self.kube.get_workload(spec.namespace, kind, name)
                if workload is None:
                    continue  # not created yet: its first pods mount the current Secret anyway
                template = ((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}
                annotations = template.get("annotations") or {}
                if annotations.get(tlssecret.ANN_ROLLED_SERIAL) == serial:
                    continue
                last = annotations.get(tlssecret.ANN_ROLLED_AT)
                if last:
                    rolled = dt.datetime.fromisoformat(last.replace("Z", "+00:00"))
                    allowed = rolled + self.settings.restart_min_interval
                    if now < allowed:
                        retry = min(retry or allowed, allowed)
                        continue
                await self.kube.annotate_pod_template(spec.namespace, kind, name, {
                    tlssecret.ANN_ROLLED_SERIAL: serial, tlssecret.ANN_ROLLED_AT: timestamps.text(now)})
                self.post_event(body, KIND, "Normal", "WorkloadRolled",
                            f"rolled {kind} {name} to pick up certificate {serial}")
            except ApiError as e:
                log.warning("could not roll %s %s/%s: %s", kind, spec.namespace, name, e)
                key = (spec.namespace, spec.name, kind, name)
                if self._roll_warned.get(key) != serial:  # once per certificate, not at every look
                    self._roll_warned[key] = serial
                    self.post_event(body, KIND, "Warning", "WorkloadRollFailed", f"could not roll {kind} {name}: {e}")
        return retry

    async def _issue(self, body: dict[str, Any], spec: IdentitySpec, view: tlssecret.SecretView,
                     decision: plan.Decision, ca: ca_mod.CA):
        request = pki.LeafRequest(spiffe_id=spec.spiffe_id, dns_names=spec.dns_names,
                                  ip_addresses=spec.ip_addresses, server=spec.server, client=spec.client,
                                  duration=spec.duration)
        ikey = (spec.namespace, spec.name)
        spare = self._spare_keys.get(ikey)
        if spare is not None and pki.key_label(spare) != spec.key.label:
            spare = None
        kept_key = view.private_key() if decision.reuse_key else spare

        def make_key() -> pki.PrivateKey:
            return kept_key or pki.generate_key(spec.key.algorithm, spec.key.size)

        if decision.reason is plan.Reason.CA_CHANGED:
            # Its turn is reserved once and kept across the wait, so the rate holds and no turn is lost.
            now_loop = asyncio.get_running_loop().time()
            turn = self._paced.pop(ikey, None)
            if turn is None:
                turn = self._reissue_rate.reserve(now_loop)
            if turn > now_loop + PACE_SLACK:
                self._paced[ikey] = turn
                self.scheduler.schedule(ikey, self.clock() + dt.timedelta(seconds=turn - now_loop))
                raise Paced()
        signed = await self.issuer.sign(spec.namespace, request, make_key, ca=ca,
                                        new_key="" if kept_key else spec.key.label)
        cert, key_obj = signed.cert, signed.key
        revision = view.revision + 1 if view.owned else 1
        renew_request = (body["metadata"].get("annotations") or {}).get(tlssecret.ANN_RENEW_REQUEST, "")
        annotations = tlssecret.record(spec, cert, ca.fingerprint, revision, renew_request,
                                       f"{self.settings.ca_namespace}/{self.settings.ca_secret_name}")
        self._spare_keys[ikey] = key_obj  # until the write lands: a refused write's retry reuses it
        version = await self._write(spec, body, view, tlssecret.build(
            spec, body["metadata"]["uid"], cert, key_obj, ca.chain_pem(), ca.bundle_pem, annotations,
            view.resource_version if view.owned else ""))
        self._spare_keys.pop(ikey, None)
        first = revision == 1
        reason = "Issued" if first else "Renewed"
        metrics.issuance.labels(decision.reason.value).inc()
        log.info("%s %s/%s: serial %s, valid until %s (%s)", reason.lower(), spec.namespace, spec.name,
                 pki.serial_hex(cert), cert.not_valid_after_utc.isoformat(), decision.reason.value)
        self.post_event(body, KIND, "Normal", reason,
                        f"{reason} certificate {pki.serial_hex(cert)} for {spec.spiffe_id} into Secret "
                        f"{spec.secret_name} ({decision.reason.value}: {decision.message})")
        renewal = plan.renewal_time(cert.not_valid_after_utc, spec, cert.serial_number)
        if cert.not_valid_after_utc >= ca.not_after - dt.timedelta(seconds=1) and renewal <= self.clock():
            # Cut short by the CA: reissuing from it cannot help; a new CA triggers the next issuance, and failing
            # that, the look at expiry reports it.
            renewal = cert.not_valid_after_utc
        return cert, renewal, revision, version

    async def _write(self, spec: IdentitySpec, body: dict[str, Any], view: tlssecret.SecretView,
                     secret: dict[str, Any]) -> str:
        """Creates or replaces the Secret; returns the resourceVersion it was written at (for the status)."""
        skey = (spec.namespace, spec.secret_name)
        self._writing[skey] = None
        try:
            if view.exists:
                written = await self.kube.replace_secret(secret)
            else:
                written = await self.kube.create_secret(secret)
            self.unread.pop(skey, None)
            self.secrets.put(skey, written)
            return written["metadata"].get("resourceVersion", "")
        finally:
            seen = self._writing.pop(skey, None)
            if seen is not None:  # now it can be told apart: our echo (nothing to do), or someone else's change
                self.secret_event("MODIFIED", seen)

    async def _without_ca(self, key: Key, body: dict[str, Any], spec: IdentitySpec, view: tlssecret.SecretView,
                          now: dt.datetime) -> None:
        """No usable CA: an identity whose certificate is still good keeps it (and its Ready); others report why."""
        cert = view.cert
        if view.owned and cert is not None:
            due = plan.renewal_time(cert.not_valid_after_utc, spec, cert.serial_number)
            if now < due:
                # Still good: keep it (and Ready), and look again when it falls due, to report then if need be.
                self.scheduler.schedule(key, due)
                self._gauge(key, True, cert.not_valid_after_utc.timestamp())
                return
        reason = status.Ready.CA_LOST if self.ca_loss is not None else status.Ready.CA_UNAVAILABLE
        await self._report_failure(body, reason, self.ca_error)

    def _gauge(self, key: Key, ready: bool, expiry: float = 0.0, renewal: float | None = None) -> None:
        """The identity's gauges, while it exists: a reconcile that outlived its identity (deleted while awaiting the
        API) must not bring back the series its deletion removed (identity_event)."""
        if self.identities.get(key) is None:
            return
        if ready:
            metrics.identities.serving(key, expiry, renewal)
        else:
            metrics.identities.not_ready(key)

    def servable(self, key: Key) -> bool:
        """An identity that exists and whose last look did not end in a refusal."""
        return self.identities.get(key) is not None and key not in self._blocked

    async def _report_failure(self, body: dict[str, Any], reason: str, message: str) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if reason != status.Ready.ISSUANCE_FAILED:  # a transient failure is retried; a refusal waits for a change
            self._blocked.add(key)
        previous = body.get("status") or {}
        generation = body["metadata"].get("generation", 0)
        version = (body["metadata"].get("uid", ""), generation)
        desired = status.failed(previous, reason, message, generation, self.clock())
        self._gauge(key, False)
        if self._unwritable.get(key) == version:
            return  # refused already: only a new spec (a new generation) or a new object can be written
        try:
            changed = await self._set_status(key, body, desired)
        except ApiError as e:
            if e.status != 422:
                raise
            # The API server refuses every write to this object as it stands: it was stored before the schema
            # tightened and its spec now fails the CRD's rules. An Event is the only way left to tell the user, once
            # per generation; retrying is pointless until the spec changes, which brings the object back anyway.
            if self._unwritable.get(key) != version:
                self._unwritable[key] = version
                metrics.failures.labels(reason).inc()
                log.error("%s/%s: %s; its status cannot be written (%s)", *key, message, e.message)
                self.post_event(body, KIND, "Warning", reason,
                            f"{message} (status cannot be written: the object fails the current schema; fix its spec "
                            f"or recreate it)")
            return
        if changed:
            metrics.failures.labels(reason).inc()
            self.post_event(body, KIND, "Warning", reason, message)

    def spawn(self, coroutine) -> asyncio.Task:
        """Runs background work tracked with the reconciles (so shutdown cancels it too). Once stopped, nothing new
        runs: the task is cancelled before its first step (its coroutine never starts), so no caller (a watch started
        by a start-up that was stopped during its awaits, a CA change, an Event sender) needs a check of its own."""
        task = asyncio.get_running_loop().create_task(coroutine)
        if self._stopped:
            task.cancel()
            return task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def post_event(self, involved: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str) -> None:
        """Queues an Event (events.py): it must neither delay the status a user waits for, nor fail a reconcile."""
        self.events.post(involved, kind, event_type, reason, message)

    def _spec(self, key: Key, body: Mapping[str, Any]) -> IdentitySpec | InvalidSpec:
        """Parses a spec once per generation (the API server bumps it on every spec change)."""
        meta = body["metadata"]
        version = (meta.get("uid", ""), meta.get("generation", 0))
        cached = self._specs.get(key)
        if cached and cached[0] == version:
            return cached[1]
        try:
            parsed: IdentitySpec | InvalidSpec = parse(key[0], key[1], body.get("spec"), self.settings)
        except InvalidSpec as e:
            parsed = e
        previous = cached[1] if cached else None
        if isinstance(previous, IdentitySpec):
            self._by_service_account.get((previous.namespace, previous.service_account), set()).discard(key)
        if isinstance(parsed, IdentitySpec):
            self._by_service_account.setdefault((parsed.namespace, parsed.service_account), set()).add(key)
        self._specs[key] = (version, parsed)
        return parsed

    def _trimmed_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        trimmed = ownership.trimmed(body)
        if "ca.crt" in trimmed["data"]:
            trimmed["data"]["ca.crt"] = self._bundle_text(trimmed["data"]["ca.crt"])
        return trimmed

    def _view(self, skey: Key, secret: Mapping[str, Any] | None, uid: str) -> tlssecret.SecretView:
        """Parses a Secret once per resourceVersion: most reconciles find it unchanged since the last look."""
        if secret is None:
            self._views.pop(skey, None)
            return tlssecret.ABSENT
        version = (secret["metadata"].get("resourceVersion", ""), uid)
        cached = self._views.get(skey)
        if cached and cached[0] == version:
            return cached[1]
        view = tlssecret.read(secret, uid)
        if view.ca_pem:
            view = dataclasses.replace(view, ca_pem=self._bundle_bytes(view.ca_pem))
        self._views[skey] = (version, view)
        return view

    async def _set_status(self, key: Key, body: dict[str, Any], desired: dict[str, Any]) -> bool:
        """Patches only what differs; returns whether anything was written."""
        current = body.get("status") or {}
        if not status.differs(current, desired):
            return False
        try:
            written = await self.kube.patch_identity_status(*key, status.merge_patch(current, desired))
        except NotFound:
            raise IdentityGone() from None
        self.identities.put(key, written)
        return True
