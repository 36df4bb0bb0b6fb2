"""An MtlsIdentity as `kubectl mtls status` shows it: its Ready condition, what its status says about the certificate,
its latest Events, and — when it is not Ready — the hint for its reason. Pure: built from the API's JSON and a clock.

`problem` is also what `check` uses to call an identity not Ready, so the two commands never disagree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import tlssecret
from . import hints, times

# The Ready message of a Ready identity says so when a renew request waits for the rate limit (reconciler.py).
_DEFERRED_MARK = "is deferred by"


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if isinstance(c, Mapping) and c.get("type") == "Ready"), {})


def problem(obj: Mapping[str, Any], now: dt.datetime) -> str | None:
    """Why the identity is not OK, as a reason (the operator's, or NotObserved / Expired); None when it is Ready with
    a certificate still in its validity."""
    condition = ready_condition(obj)
    state = condition.get("status")
    if state is None:
        return hints.NOT_OBSERVED
    if state != "True":
        return str(condition.get("reason") or "Unknown")
    not_after = times.parse((obj.get("status") or {}).get("notAfter"))
    if not_after is not None and not_after <= now:
        return hints.EXPIRED
    return None


def hint_values(obj: Mapping[str, Any], authority: str = "") -> dict[str, str]:
    """What a hint's placeholders are filled with, from the identity object."""
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = str(meta.get("name") or "")
    return {"name": name, "namespace": str(meta.get("namespace") or ""),
            "secret": str(st.get("secretName") or spec.get("secretName") or (f"{name}-mtls" if name else "")),
            "service_account": str(spec.get("serviceAccountName") or name), "authority": authority}


@dataclasses.dataclass(frozen=True)
class EventLine:
    type: str
    reason: str
    message: str
    count: int
    last_seen: dt.datetime | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> EventLine:
        meta = body.get("metadata") or {}
        when = (times.parse(body.get("lastTimestamp")) or times.parse(body.get("eventTime"))
                or times.parse(body.get("firstTimestamp")) or times.parse(meta.get("creationTimestamp")))
        return cls(type=str(body.get("type") or ""), reason=str(body.get("reason") or ""),
                   message=str(body.get("message") or body.get("note") or ""), count=int(body.get("count") or 1),
                   last_seen=when)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "reason": self.reason, "message": self.message, "count": self.count,
                "lastSeen": times.iso(self.last_seen)}


def latest_events(bodies: Iterable[Mapping[str, Any]], limit: int) -> tuple[EventLine, ...]:
    """The newest `limit` Events, oldest first (as `kubectl describe` lists them)."""
    lines = sorted((EventLine.from_body(b) for b in bodies),
                   key=lambda e: e.last_seen or dt.datetime.min.replace(tzinfo=dt.UTC))
    return tuple(lines[-limit:]) if limit > 0 else ()


@dataclasses.dataclass(frozen=True)
class IdentityReport:
    namespace: str
    name: str
    generation: int | None
    observed_generation: int | None
    ready: str  # "True", "False", or "Unknown" when there is no condition yet
    reason: str
    message: str
    since: dt.datetime | None
    spiffe_id: str
    secret_name: str
    serial: str
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    renewal_time: dt.datetime | None
    revision: int | None
    issuer_fingerprint: str
    issuer: str  # the issuing CA's subject, when an MtlsAuthority names that fingerprint
    renew_requested: str  # the current value of the renew annotation, "" when none
    renewal_deferred: bool
    problem: str | None  # None when OK
    hint: hints.Hint | None
    events: tuple[EventLine, ...]
    events_note: str  # why Events could not be shown, "" when they could
    now: dt.datetime

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def stale(self) -> bool:
        """The operator has not yet looked at the newest generation of the spec."""
        return (self.generation is not None and self.observed_generation is not None
                and self.observed_generation < self.generation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "IdentityStatus",
            "namespace": self.namespace, "name": self.name, "ok": self.ok,
            "ready": {"status": self.ready, "reason": self.reason, "message": self.message,
                      "since": times.iso(self.since)},
            "problem": self.problem,
            "generation": self.generation, "observedGeneration": self.observed_generation,
            "spiffeID": self.spiffe_id or None, "secretName": self.secret_name or None,
            "serialNumber": self.serial or None,
            "notBefore": times.iso(self.not_before), "notAfter": times.iso(self.not_after),
            "renewalTime": times.iso(self.renewal_time), "revision": self.revision,
            "issuer": self.issuer or None, "issuerFingerprint": self.issuer_fingerprint or None,
            "renewRequested": self.renew_requested or None, "renewalDeferred": self.renewal_deferred,
            "hint": self.hint.to_dict() if self.hint else None,
            "events": [e.to_dict() for e in self.events], "eventsNote": self.events_note or None,
        }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def issuer_subject(fingerprint: str, authorities: Sequence[Mapping[str, Any]]) -> str:
    """The subject of the CA with this fingerprint, as an MtlsAuthority's status names it (issuer or trust anchor)."""
    if not fingerprint:
        return ""
    for authority in authorities:
        st = authority.get("status") or {}
        if st.get("issuerFingerprint") == fingerprint:
            return str(st.get("issuer") or "")
        for anchor in st.get("trustAnchors") or []:
            if isinstance(anchor, Mapping) and anchor.get("fingerprint") == fingerprint:
                return str(anchor.get("subject") or "")
    return ""


def authority_name(authorities: Sequence[Mapping[str, Any]]) -> str:
    """The MtlsAuthority a CALost hint should name: the only one, else none (the hint shows <authority>)."""
    return str((authorities[0].get("metadata") or {}).get("name") or "") if len(authorities) == 1 else ""


def report(obj: Mapping[str, Any], events: Iterable[Mapping[str, Any]], authorities: Sequence[Mapping[str, Any]],
           now: dt.datetime, max_events: int = 5, events_note: str = "") -> IdentityReport:
    meta, st = obj.get("metadata") or {}, obj.get("status") or {}
    condition = ready_condition(obj)
    reason = problem(obj, now)
    lines = latest_events(events, max_events)
    message = str(condition.get("message") or "")
    deferred = condition.get("status") == "True" and _DEFERRED_MARK in message
    hint = None
    if reason is not None:
        hint = hints.for_reason(reason, hint_values(obj, authority_name(authorities)))
    elif deferred:
        hint = hints.for_reason(hints.RENEWAL_DEFERRED, hint_values(obj))
    fingerprint = str(st.get("issuerFingerprint") or "")
    return IdentityReport(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
        generation=_int(meta.get("generation")), observed_generation=_int(st.get("observedGeneration")),
        ready=str(condition.get("status") or "Unknown"), reason=str(condition.get("reason") or ""), message=message,
        since=times.parse(condition.get("lastTransitionTime")),
        spiffe_id=str(st.get("spiffeID") or ""), secret_name=str(st.get("secretName") or ""),
        serial=str(st.get("serialNumber") or ""), not_before=times.parse(st.get("notBefore")),
        not_after=times.parse(st.get("notAfter")), renewal_time=times.parse(st.get("renewalTime")),
        revision=_int(st.get("revision")), issuer_fingerprint=fingerprint,
        issuer=issuer_subject(fingerprint, authorities),
        renew_requested=str((meta.get("annotations") or {}).get(tlssecret.ANN_RENEW_REQUEST) or ""),
        renewal_deferred=deferred, problem=reason, hint=hint, events=lines, events_note=events_note, now=now)
