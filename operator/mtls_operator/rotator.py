"""Carries out the root rotation that rotation.py decides: one write of the CA Secret per step, the phase recorded in
that same write, so a restart at any point resumes. The CA Secret's watch then brings the new bundle or issuer to every
identity (reconciler.ca_changed): bundles are refreshed, leaves reissued, through the ordinary reconcile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Coroutine, Hashable, Iterable, Mapping
from typing import Any, Protocol

from . import ca as ca_mod
from . import caloss, metrics, pki, rotation, timestamps, tlssecret
from .authority import AuthorityStatus
from .bundles import TrustBundles
from .clustertrustbundle import ClusterTrustBundlePublisher
from .config import Settings
from .kube import Conflict, Kube
from .scheduler import Scheduler
from .tlssecret import b64


class SecretsView(Protocol):
    def __iter__(self) -> Iterable[Hashable]: ...
    def get(self, key: Hashable) -> dict[str, Any] | None: ...


class RotationHost(Protocol):
    """All the rotation uses of the operator around it (the Reconciler provides it): the CA Secret as loaded and a way
    to load a new one, the issued Secrets proven ours (read, or known by their metadata: unread) and whether their
    identities can be served, the trust bundles it waits for, the status it reports on, and the scheduler, Events and
    background tasks."""

    settings: Settings
    kube: Kube
    ca: ca_mod.CA | None
    ca_secret: dict[str, Any] | None
    secrets: SecretsView
    unread: dict[Any, dict[str, Any]]  # Secrets proven ours known by their metadata only (Reconciler.unread)
    bundles: TrustBundles
    cluster_bundle: ClusterTrustBundlePublisher | None
    authority: AuthorityStatus
    scheduler: Scheduler

    def clock(self) -> dt.datetime: ...
    async def ca_changed(self, body: Mapping[str, Any] | None, startup: bool = False) -> None: ...
    def proven_owner(self, secret: Mapping[str, Any]) -> Hashable | None: ...
    def servable(self, key: Hashable) -> bool: ...
    def as_written(self, unread: Mapping[str, Any]) -> bool: ...
    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...
    def post_event(self, involved: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str) -> None:
        ...

log = logging.getLogger(__name__)
KEY = ("", "ca-rotation")  # the scheduler key of the rotation's own timer
WAIT_REPORT_INTERVAL = 5.0  # seconds between refreshes of a wait's MtlsAuthority condition
PHASE_NUMBER = {rotation.Phase.STABLE: 0, rotation.Phase.PROPAGATING: 1, rotation.Phase.REISSUING: 2,
                rotation.Phase.RETIRING: 3}


class RootRotator:
    def __init__(self, host: RotationHost, timing: rotation.Timing) -> None:
        self.r = host
        self.timing = timing
        self._lock = asyncio.Lock()
        self._wait: rotation.Wait | None = None
        self._warned: rotation.Wait | None = None  # the wait a Warning Event was raised for (once per stall)
        self.waiting = ""  # what the current phase waits for (the MtlsAuthority condition), or "" when it does not
        self.waiting_reason = "WaitingForSecrets"
        self._waiting_published = 0.0
        self._current: tuple[Any, dt.datetime] | None = None  # (phase, since every bundle is current)
        self._wake: dt.datetime | None = None
        self._pod_records: dict[str, dt.datetime] | None = {}  # loaded at each check (_load_pod_records)

    def progress(self, authority: ca_mod.CA, phase: rotation.Phase, now: dt.datetime) -> rotation.Progress:
        """The counts, and what they mean over time (kept in memory: after a restart every wait starts afresh, which
        only ever makes a phase longer)."""
        stale_names, old_names, configmaps = self._count(authority)
        stale, old = len(stale_names) + configmaps, len(old_names)
        self._wait = rotation.track_wait(self._wait, phase, rotation.waiting_for(phase, stale, old), now)
        changed_at = self._wait.progressed_at
        stalled = now - changed_at >= self.timing.stall
        self._report_wait(phase, stale_names, old_names, configmaps, now)
        if stale == 0:
            if self._current is None or self._current[0] != phase:
                self._current = (phase, now)
            current_since: dt.datetime | None = self._current[1]
        else:
            self._current = None
            current_since = changed_at if stalled else None
        return rotation.Progress(stale, old, bundles_current_since=current_since, stalled=stalled)

    def _progress(self, authority: ca_mod.CA, state: rotation.State, now: dt.datetime) -> rotation.Progress:
        if rotation.needs_progress(state):
            return self.progress(authority, state.phase, now)
        if state.phase is rotation.Phase.RETIRING:
            return rotation.Progress(0, 0, pod_certificates_until=self._pod_certificates_until(authority, state, now))
        return rotation.Progress(0, 0)

    async def _load_pod_records(self) -> dict[str, dt.datetime] | None:
        """The signer's signed-until records ({} when no pod certificate can exist; None when some may, but the
        records cannot be read)."""
        bundle = self.r.cluster_bundle
        if bundle is None or not bundle.signer_api:
            return {}
        return await bundle.records()

    def _pod_certificates_until(self, authority: ca_mod.CA, state: rotation.State,
                                now: dt.datetime) -> dt.datetime | None:
        """When the last pod certificate under a root being retired (in the bundle, not the current anchor) expires
        (None: none was signed). When they outlast the grace period, the MtlsAuthority says so from the start."""
        current = authority.anchor_fingerprint
        retiring = [fp[:16] for fp in map(pki.fingerprint, pki.load_chain(authority.bundle_pem)) if fp != current]
        since = state.since or now
        records = self._pod_records
        if records is None:  # unknown: assume the longest pod certificate was signed just before this phase began
            until: dt.datetime | None = since + self.r.settings.pod_cert_max_lifetime * 5 / 4
            why = "their records on the ClusterTrustBundle cannot be read, so for the longest pod certificate lifetime"
        else:
            until = max((t for fp, t in records.items() if fp in retiring), default=None)
            why = "the last at {}"
        grace_over = since + self.timing.grace
        message = ""
        if until is not None and until > max(now, grace_over):
            when = timestamps.text(until)
            message = (f"root rotation phase Retiring waits for pod certificates signed under the old root to expire "
                       f"({why.format(when)}); the old root stays in every bundle until {when}")
        if message != self.waiting:
            self.waiting = message
            self.waiting_reason = "WaitingForPodCertificates" if message else "WaitingForSecrets"
            self.r.spawn(self.r.authority.publish())
        return until

    def _count(self, authority: ca_mod.CA) -> tuple[list[str], list[str], int]:
        """(Secrets with an old bundle, Secrets with a leaf from another issuer, stale bundle ConfigMaps), named
        `namespace/name`. Only Secrets proven ours are in the cache (ownership.py), and the proof is checked again
        here: a look-alike is never waited for."""
        bundle = b64(authority.bundle_pem)
        stale: list[str] = []
        old: list[str] = []
        for key in self.r.secrets:
            body = self.r.secrets.get(key)
            owner = self.r.proven_owner(body) if body is not None else None
            # Secrets of identities that cannot be served now (denied, invalid, gone) would hold the rotation for
            # nothing: only identities the operator can issue for are waited on.
            if owner is None or body is None or not self.r.servable(owner):
                continue
            if (body.get("data") or {}).get("ca.crt") != bundle:
                stale.append(f"{key[0]}/{key[1]}")
            if (body.get("metadata", {}).get("annotations") or {}).get(tlssecret.ANN_ISSUER) != authority.fingerprint:
                old.append(f"{key[0]}/{key[1]}")
        for key, body in list(self.r.unread.items()):
            # Not read since start-up, and unchanged since this operator wrote it: its digests say what it holds.
            owner = self.r.proven_owner(body)
            if owner is None or not self.r.servable(owner):
                continue
            # Changed since (a read is on its way): counted as behind on both until read.
            annotations = (body["metadata"].get("annotations") or {}) if self.r.as_written(body) else {}
            if annotations.get(tlssecret.ANN_BUNDLE) != authority.bundle_digest:
                stale.append(f"{key[0]}/{key[1]}")
            if annotations.get(tlssecret.ANN_ISSUER) != authority.fingerprint:
                old.append(f"{key[0]}/{key[1]}")
        configmaps = self.r.bundles.stale() if self.r.settings.bundle_configmap else 0
        if self.r.cluster_bundle is not None:
            configmaps += self.r.cluster_bundle.stale()
        return stale, old, configmaps

    def _report_wait(self, phase: rotation.Phase, stale: list[str], old: list[str], configmaps: int,
                     now: dt.datetime) -> None:
        """A phase that waits says so: a gauge per thing waited for, the MtlsAuthority condition (refreshed at most
        every few seconds, so a large fleet moving on costs few status writes), and one Warning Event on the CA Secret
        once the wait has made no progress for a quarter of --ca-stall."""
        wait = self._wait
        counts = {"bundle": len(stale) + configmaps, "issuer": len(old) if phase is rotation.Phase.REISSUING else 0}
        if wait is None or not rotation.waiting_for(phase, counts["bundle"], counts["issuer"]):
            counts = {"bundle": 0, "issuer": 0}
        for what, n in counts.items():
            metrics.ca_rotation_waiting.labels(what).set(n)
        if not any(counts.values()):
            if self.waiting:
                self.waiting = ""
                self.r.spawn(self.r.authority.publish())
            return
        assert wait is not None
        message = rotation.describe_wait(phase, stale, old if phase is rotation.Phase.REISSUING else [], configmaps,
                                         wait.progressed_at + self.timing.stall)
        loop_now = asyncio.get_running_loop().time()
        if not self.waiting or loop_now - self._waiting_published >= WAIT_REPORT_INTERVAL:
            self.waiting, self._waiting_published = message, loop_now
            self.r.spawn(self.r.authority.publish())
        if now - wait.progressed_at >= self.timing.stall / 4 and self._warned != wait:
            self._warned = wait
            self.waiting, self._waiting_published = message, loop_now
            self.r.spawn(self.r.authority.publish())
            log.warning("CA %s", message)
            if self.r.ca_secret is not None:
                self.r.post_event(self.r.ca_secret, "Secret", "Warning", "RotationWaiting", message)

    def _schedule(self, when: dt.datetime) -> None:
        """The next look: the earliest that any part of one check asked for."""
        if self._wake is None or when < self._wake:
            self._wake = when
            self.r.scheduler.schedule(KEY, when)

    def _timing_for(self, root: Any) -> rotation.Timing:
        """--ca-rotate-before, but never more than a third of the root's life: a short-lived root must not be due
        the moment it is made (and rotate in a loop)."""
        lifetime = root.not_valid_after_utc - root.not_valid_before_utc
        return dataclasses.replace(self.timing, rotate_before=min(self.timing.rotate_before, lifetime / 3))

    async def check(self) -> None:
        """Takes the next step if it is due, and sets the timer for the next look."""
        async with self._lock:
            self._wake = None
            self._pod_records = await self._load_pod_records()
            body, authority = self.r.ca_secret, self.r.ca
            if body is None or authority is None:
                return
            meta = body.get("metadata", {})
            role = (meta.get("labels") or {}).get(rotation.MANAGED_LABEL)
            if (meta.get("annotations") or {}).get(rotation.ANN_MADE) != authority.fingerprint:
                return  # not (or no longer) the CA the operator made: brought in, never rotated or overwritten
            if role == "intermediate":
                written = await self._rotate_root_above_intermediate(body, authority)
                if written is None:
                    written = await self._rotate_intermediate(body, authority)
                if written is None:
                    return
            elif role != "root":
                return  # brought in: the enterprise rotates it
            else:
                written = await self._rotate_root(body, authority, meta)
                if written is None:
                    return
        # Load it now (the watch brings it again, harmlessly): bundles and issuer move on, the next step is looked at.
        await self.r.ca_changed(written)

    def _root_secret_name(self) -> str:
        return f"{self.r.settings.ca_secret_name}-root"

    async def _rotate_root_above_intermediate(self, body: dict[str, Any],
                                              authority: ca_mod.CA) -> dict[str, Any] | None:
        """The same overlap rotation for the root behind an operator-made intermediate: the phase is kept on the issuing
        Secret (whose ca.crt is the bundle), the roots in the root Secret, and PROMOTE also makes a new intermediate
        under the new root. Every step is safe to repeat, so a kill between the two Secrets' writes only repeats it."""
        s = self.r.settings
        state = rotation.parse_state(body["metadata"].get("annotations") or {}, rotation.ANN_ROOT_REQUEST,
                                     rotation.ANN_ROOT_HANDLED)
        metrics.ca_rotation_phase.set(PHASE_NUMBER[state.phase])
        root_body = await self.r.kube.get_secret(s.ca_namespace, self._root_secret_name())
        if root_body is None:
            return None
        root_data = tlssecret.decode_data(root_body)
        root = pki.load_chain(root_data["tls.crt"])[0]
        if (root_body["metadata"].get("annotations") or {}).get(rotation.ANN_MADE) != pki.fingerprint(root):
            return None  # the root was replaced by someone: theirs to rotate
        now = self.r.clock()
        progress = self._progress(authority, state, now)
        step, wake = rotation.next_step(state, root.not_valid_after_utc, now, self._timing_for(root), progress)
        if wake is not None:
            self._schedule(wake)
        if step is None:
            return None

        extra: dict[str, Any] = {}
        if step is rotation.Step.START:
            if "next.crt" not in root_data:
                fresh = ca_mod.new_root(s, now)
                root_body["data"] = {**root_body["data"], "next.crt": b64(fresh["tls.crt"]),
                                     "next.key": b64(fresh["tls.key"])}
                root_body = await self.r.kube.replace_secret(root_body)
                root_data = {**root_data, "next.crt": fresh["tls.crt"], "next.key": fresh["tls.key"]}
            extra["next_root"] = root_data["next.crt"]
        elif step is rotation.Step.PROMOTE:
            if "next.crt" in root_data:
                promoted = {"tls.crt": root_data["next.crt"], "tls.key": root_data["next.key"],
                            "ca.crt": root_data["next.crt"]}
                root_body["data"] = {k: b64(v) for k, v in promoted.items()}
                root_body["metadata"]["annotations"] = {
                    **(root_body["metadata"].get("annotations") or {}),
                    rotation.ANN_MADE: pki.fingerprint(pki.load_chain(promoted["tls.crt"])[0])}
                root_body = await self.r.kube.replace_secret(root_body)
                root_data = promoted
            extra["issuing"] = ca_mod.new_intermediate(root_data, s, now)
        elif step is rotation.Step.FINISH:
            extra["final_root"] = root_data["tls.crt"]
        try:
            written = await self.r.kube.replace_secret(self._apply(step, body, state, now, **extra))
        except Conflict:
            self._schedule(now + dt.timedelta(seconds=1))
            return None
        log.info("CA root rotation (behind the intermediate): %s", step.value)
        self.r.post_event(written, "Secret", "Normal", f"RootRotation{step.value.capitalize()}",
                      f"root rotation behind the intermediate: {step.value}")
        return written

    async def _rotate_intermediate(self, body: dict[str, Any], authority: ca_mod.CA) -> dict[str, Any] | None:
        """An operator-made intermediate is replaced --ca-rotate-before (at most a third of its lifetime) early, or
        when asked: a new one from the same root. Peers trust the root, so nothing needs to propagate first; leaves
        move over at --reissue-rate."""
        annotations = body["metadata"].get("annotations") or {}
        if rotation.parse_state(annotations).phase is not rotation.Phase.STABLE:
            return None  # the root is being rotated: the intermediate moves with it
        state = rotation.parse_state(annotations)
        now = self.r.clock()
        lifetime = authority.cert.not_valid_after_utc - authority.cert.not_valid_before_utc
        due = authority.not_after - min(self.timing.rotate_before, lifetime / 3)
        if now < due and not (state.request and state.request != state.handled):
            self._schedule(due)
            return None
        s = self.r.settings
        root = await self.r.kube.get_secret(s.ca_namespace, self._root_secret_name())
        if root is None:
            log.error("cannot renew the intermediate: root Secret %s/%s-root is missing", s.ca_namespace,
                      s.ca_secret_name)
            return None
        root_data = tlssecret.decode_data(root)
        fresh = ca_mod.new_intermediate(root_data, s, now)
        meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
        meta["annotations"] = {**annotations, rotation.ANN_MADE: pki.fingerprint(pki.load_chain(fresh["tls.crt"])[0]),
                               **({rotation.ANN_HANDLED: state.request} if state.request else {})}
        data = {**(body.get("data") or {}), **{k: b64(v) for k, v in fresh.items()}}
        try:
            written = await self.r.kube.replace_secret({**body, "metadata": meta, "data": data})
        except Conflict:
            self._schedule(now + dt.timedelta(seconds=1))
            return None
        log.info("CA intermediate renewed from the same root; leaves move over")
        self.r.post_event(written, "Secret", "Normal", "IntermediateRenewed",
                      "a new intermediate from the same root; leaves are being reissued")
        return written

    async def _rotate_root(self, body: dict[str, Any], authority: ca_mod.CA,
                           meta: Mapping[str, Any]) -> dict[str, Any] | None:
        """A root the operator made: one step of the overlap rotation in rotation.py, when it is due."""
        state = rotation.parse_state(meta.get("annotations") or {})
        metrics.ca_rotation_phase.set(PHASE_NUMBER[state.phase])
        now = self.r.clock()
        progress = self._progress(authority, state, now)
        step, wake = rotation.next_step(state, authority.not_after, now, self._timing_for(authority.cert), progress)
        if wake is not None:
            self._schedule(wake)
        if step is None:
            return None
        try:
            written = await self.r.kube.replace_secret(self._apply(step, body, state, now))
        except Conflict:
            self._schedule(now + dt.timedelta(seconds=1))  # changed meanwhile: look again
            return None
        message = {
            rotation.Step.START: "rotation started: the next root is published next to the current one",
            rotation.Step.PROMOTE: "rotation: issuing from the new root; leaves are being reissued",
            rotation.Step.RETIRE: "rotation: every leaf is issued by the new root; grace period before the old "
                                  "root is dropped",
            rotation.Step.FINISH: "rotation finished: bundles hold the new root only",
        }[step]
        if step in (rotation.Step.PROMOTE, rotation.Step.RETIRE) and (progress.stale_bundle or progress.old_issuer):
            message += (f" (moved on after {self.timing.stall}: {progress.stale_bundle} Secrets with an old bundle,"
                        f" {progress.old_issuer} with a certificate from the old root)")
        log.info("CA %s", message)
        self.r.post_event(written, "Secret", "Normal", f"Rotation{step.value.capitalize()}", message)
        return written

    def _apply(self, step: rotation.Step, body: Mapping[str, Any], state: rotation.State, now: dt.datetime, *,
               next_root: bytes = b"", issuing: Mapping[str, bytes] | None = None,
               final_root: bytes = b"") -> dict[str, Any]:
        """The CA Secret after one step (a full replace carrying resourceVersion). With an operator-made intermediate,
        the roots live in the root Secret: the caller passes the next root (START), the new intermediate (PROMOTE) and
        the root that remains (FINISH)."""
        data = dict(body.get("data") or {})
        meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
        annotations = dict(meta.get("annotations") or {})

        def pem(field: str) -> bytes:
            return tlssecret.decode_field(data, field)

        phase = {rotation.Step.START: rotation.Phase.PROPAGATING, rotation.Step.PROMOTE: rotation.Phase.REISSUING,
                 rotation.Step.RETIRE: rotation.Phase.RETIRING, rotation.Step.FINISH: rotation.Phase.STABLE}[step]
        if step is rotation.Step.START:
            current_bundle = pem("ca.crt") or pem("tls.crt")
            if not next_root:
                fresh = ca_mod.new_root(self.r.settings, now)
                data["next.crt"], data["next.key"] = b64(fresh["tls.crt"]), b64(fresh["tls.key"])
                next_root = fresh["tls.crt"]
            data["ca.crt"] = b64(current_bundle + next_root)
            annotations[state.handled_key] = state.request
        elif step is rotation.Step.PROMOTE:
            if issuing is not None:
                data["tls.crt"], data["tls.key"] = b64(issuing["tls.crt"]), b64(issuing["tls.key"])
            elif "next.crt" in data:
                data["tls.crt"], data["tls.key"] = data.pop("next.crt"), data.pop("next.key")
            # else a recovery (caloss.py): the new root already issues; only the lost root's leaves stop being kept
            annotations.pop(caloss.ANN_RECOVERY, None)
            annotations[rotation.ANN_MADE] = pki.fingerprint(pki.load_chain(pem("tls.crt"))[0])
        elif step is rotation.Step.FINISH:
            data["ca.crt"] = b64(final_root or pki.to_pem(pki.load_chain(pem("tls.crt"))[-1]))
        if phase is rotation.Phase.STABLE:
            annotations.pop(rotation.ANN_PHASE, None)
            annotations.pop(rotation.ANN_SINCE, None)
        else:
            annotations[rotation.ANN_PHASE] = phase.value
            annotations[rotation.ANN_SINCE] = timestamps.text(now)
        meta["annotations"] = annotations
        return {**body, "metadata": meta, "data": data}
