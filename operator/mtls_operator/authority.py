"""The cluster-level view of the issuing CA: an MtlsAuthority object (cluster-scoped, one per CA Secret) whose status
says whether the CA is usable, what it is, which roots peers must trust, and where a root rotation stands.

Written only when something changed (the last status written is remembered), and best effort: the CA Secret stays the
record; this object is for `kubectl get mtlsauthorities`, for dashboards and for alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, Protocol

from . import pki, rotation, timestamps
from .ca import CA
from .config import Settings
from .kube import ApiError, Conflict, Kube, NotFound
from .spec import GROUP, VERSION
from .tlssecret import MANAGED_BY, MANAGED_BY_VALUE

log = logging.getLogger(__name__)


class CAState(Protocol):
    """What this status is made from: the CA in force (or why there is none) and the CA Secret it came from."""

    ca: CA | None
    ca_error: str
    ca_loss: Any
    ca_secret: dict[str, Any] | None


class AuthorityStatus:
    def __init__(self, kube: Kube, settings: Settings, clock: Callable[[], dt.datetime], state: CAState,
                 waiting: Callable[[], tuple[str, str]]) -> None:
        """`waiting`: what a rotation phase waits for, as (reason, message); message "" when it waits for nothing."""
        self.kube, self.settings, self.clock, self.state, self._waiting = kube, settings, clock, state, waiting
        self.name = f"{settings.ca_namespace}.{settings.ca_secret_name}"
        self._written: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    def desired(self) -> dict[str, Any]:
        r, now = self.state, self.clock()
        previous = {c["type"]: c for c in (self._written or {}).get("conditions", [])}

        def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            state = "True" if ok else "False"
            since = previous.get(kind, {}).get("lastTransitionTime") if previous.get(kind, {}).get(
                "status") == state else None
            return {"type": kind, "status": state, "reason": reason, "message": message[:1024],
                    "lastTransitionTime": since or timestamps.text(now)}

        annotations = ((r.ca_secret or {}).get("metadata", {}).get("annotations") or {}) if r.ca else {}
        phase = rotation.parse_state(annotations)
        out: dict[str, Any] = {"rotationPhase": phase.phase.value or "Stable",
                               "rotationSince": timestamps.text(phase.since) if phase.since else None}
        if r.ca is None:
            reason = "CALost" if r.ca_loss is not None else "CAInvalid"
            out["conditions"] = [condition("Ready", False, reason, r.ca_error),
                                 condition("Rotating", False, "Stable", "")]
            return out
        anchors = pki.load_chain(r.ca.bundle_pem)
        reason, waiting = self._waiting()
        out.update({
            "issuer": r.ca.cert.subject.rfc4514_string(),
            "issuerFingerprint": r.ca.fingerprint,
            "issuerNotAfter": timestamps.text(r.ca.not_after),
            "trustAnchorCount": len(anchors),
            "trustAnchors": [{"subject": a.subject.rfc4514_string(), "fingerprint": pki.fingerprint(a),
                              "notAfter": timestamps.text(a.not_valid_after_utc)} for a in anchors],
            "conditions": [
                condition("Ready", True, "CAValid", f"issuing from {r.ca.fingerprint[:16]}…"),
                condition("Rotating", phase.phase is not rotation.Phase.STABLE, phase.phase.value or "Stable",
                          f"root rotation phase {phase.phase.value}" if phase.phase.value else "no rotation under way"),
                # What a phase waits for, by name: an on-call engineer sees who holds the rotation, and until when.
                condition("RotationWaiting", bool(waiting), reason if waiting else "NotWaiting",
                          waiting or "the rotation waits for nothing"),
            ],
        })
        return out

    async def publish(self) -> None:
        async with self._lock:
            desired = self.desired()
            if desired == self._written:
                return
            try:
                try:
                    await self.kube.patch_authority_status(self.name, desired)
                except NotFound:
                    s = self.settings
                    with contextlib.suppress(Conflict):  # another replica made it first
                        await self.kube.create_authority({
                            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MtlsAuthority",
                            "metadata": {"name": self.name, "labels": {MANAGED_BY: MANAGED_BY_VALUE}},
                            "spec": {"secretNamespace": s.ca_namespace, "secretName": s.ca_secret_name}})
                    await self.kube.patch_authority_status(self.name, desired)
            except ApiError as e:
                log.warning("could not publish MtlsAuthority %s: %s", self.name, e)
                return
            self._written = desired
