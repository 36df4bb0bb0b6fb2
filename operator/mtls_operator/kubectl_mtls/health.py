"""The verdicts of `kubectl mtls check`, pure: from what the API returned (or the error that stopped a read) and a
clock, one finding per thing looked at — the operator's pods, its leader Lease, each CA (MtlsAuthority), the
identities — at one of four levels.

OK and WARN leave the exit code at 0; FAIL makes it 1; UNKNOWN (a read that failed: forbidden, say) makes it 3 when
nothing failed, because "healthy" cannot be said about what was not seen.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from . import exitcodes, hints, identity, times

CA_EXPIRY_WARNING = dt.timedelta(days=30)  # the operator's --ca-rotate-before default: a self-made root rotates then
SHOWN_NOT_READY = 20  # identities listed by name in text; JSON lists all


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str  # "pods", "leader", "ca", "identities"
    level: Level
    summary: str
    details: tuple[str, ...] = ()
    subject: str = ""  # what the finding is about, when there are several of a kind (an MtlsAuthority's name)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "subject": self.subject or None, "level": self.level.value,
                "summary": self.summary, "details": list(self.details)}


@dataclasses.dataclass(frozen=True)
class NotReady:
    namespace: str
    name: str
    reason: str
    message: str
    hint: hints.Hint

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "reason": self.reason, "message": self.message,
                "hint": self.hint.to_dict()}


@dataclasses.dataclass(frozen=True)
class Read:
    """One API read for `check`: the items (or the one object) or why they could not be had. `missing` means the
    object does not exist (a 404), which is an answer, not an error."""

    items: Sequence[Mapping[str, Any]] = ()
    error: str = ""
    missing: bool = False

    @property
    def one(self) -> Mapping[str, Any] | None:
        return self.items[0] if self.items and not self.error else None


@dataclasses.dataclass(frozen=True)
class CheckReport:
    operator_namespace: str
    identity_namespace: str | None  # None: all namespaces
    findings: tuple[Finding, ...]
    not_ready: tuple[NotReady, ...]
    identities_total: int | None

    @property
    def level(self) -> Level:
        levels = {f.level for f in self.findings}
        for level in (Level.FAIL, Level.UNKNOWN, Level.WARN):
            if level in levels:
                return level
        return Level.OK

    @property
    def exit_code(self) -> int:
        return {Level.FAIL: exitcodes.NOT_OK, Level.UNKNOWN: exitcodes.API_ERROR}.get(self.level, exitcodes.OK)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "HealthCheck", "verdict": self.level.value, "ok": self.exit_code == exitcodes.OK,
            "operatorNamespace": self.operator_namespace, "identityNamespace": self.identity_namespace,
            "findings": [f.to_dict() for f in self.findings],
            "identities": {"total": self.identities_total, "notReady": [n.to_dict() for n in self.not_ready]},
        }


# ---- the operator: pods and Lease ----

@dataclasses.dataclass(frozen=True)
class LeaseState:
    holder: str
    renewed: dt.datetime | None
    duration: float
    age: float | None  # seconds since the last renewal, by this machine's clock

    @property
    def fresh(self) -> bool:
        return bool(self.holder) and self.age is not None and self.age <= self.duration


def lease_state(lease: Mapping[str, Any], now: dt.datetime) -> LeaseState:
    spec = lease.get("spec") or {}
    renewed = times.parse(spec.get("renewTime")) or times.parse(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    return LeaseState(holder=str(spec.get("holderIdentity") or ""), renewed=renewed,
                      duration=float(duration) if isinstance(duration, int | float) and duration > 0 else 15.0,
                      age=(now - renewed).total_seconds() if renewed else None)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, Mapping))


def _restarts(pod: Mapping[str, Any]) -> int:
    return sum(int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get("containerStatuses") or []
               if isinstance(s, Mapping))


def operator_findings(pods: Read, lease: Read, namespace: str, lease_name: str, selector: str,
                      now: dt.datetime) -> list[Finding]:
    """The pods and the leader, judged together: no pods is fine when a fresh Lease shows the operator runs elsewhere
    (a local process, another cluster's kubeconfig); a Lease nobody renews is not fine, pods or not."""
    state = lease_state(lease.one, now) if lease.one is not None else None

    if lease.error:
        leader = Finding("leader", Level.UNKNOWN, f"Lease {namespace}/{lease_name}: {lease.error}")
    elif state is None:
        level = Level.FAIL if (not pods.error and not pods.items) else Level.WARN
        leader = Finding("leader", level, f"no Lease {namespace}/{lease_name}: no leader has been elected", (
            "the operator is not running, runs with --leader-election=false, or uses another --lease-name or "
            "--ca-namespace (then pass --operator-namespace / --lease-name)",))
    elif not state.holder:
        leader = Finding("leader", Level.FAIL, f"Lease {namespace}/{lease_name} is released: there is no leader", (
            "the last leader shut down and no replica has taken over; is any running?",))
    elif not state.fresh:
        age = f"{times.span(state.age)} ago" if state.age is not None else "never"
        leader = Finding("leader", Level.FAIL, f"leader {state.holder} is stale: last renewed {age}, lease "
                         f"{state.duration:.0f}s", (
                             "the leader is gone, hung, or cannot reach the API server; nothing is issued or renewed "
                             "until a replica takes over (judged by this machine's clock)",))
    else:
        leader = Finding("leader", Level.OK, f"{state.holder}, renewed {times.span(state.age or 0)} ago (lease "
                         f"{state.duration:.0f}s)")

    if pods.error:
        found = Finding("pods", Level.UNKNOWN, f"pods in {namespace} ({selector}): {pods.error}")
    elif not pods.items:
        fresh = state is not None and state.fresh
        found = Finding("pods", Level.OK if fresh else Level.WARN,
                        f"no operator pods in {namespace} ({selector})",
                        ("the operator may run outside the cluster (a local process): judged by its Lease"
                         + (", which is fresh" if fresh else ""),))
    else:
        ready = [p for p in pods.items if _pod_ready(p)]
        details = []
        for pod in pods.items:
            name = str((pod.get("metadata") or {}).get("name") or "")
            leads = " (leader)" if state and state.holder.startswith(name + "-") else ""
            details.append(f"{name}: {'Ready' if _pod_ready(pod) else 'not Ready'}, "
                           f"{(pod.get('status') or {}).get('phase') or 'Unknown'}, {_restarts(pod)} restarts{leads}")
        level = Level.OK if len(ready) == len(pods.items) else Level.WARN if ready else Level.FAIL
        found = Finding("pods", level, f"{len(ready)} of {len(pods.items)} operator pods Ready in {namespace}",
                        tuple(details))
    return [found, leader]


# ---- the CA ----

def authority_findings(authorities: Read, now: dt.datetime) -> list[Finding]:
    if authorities.error:
        return [Finding("ca", Level.UNKNOWN, f"MtlsAuthorities: {authorities.error}")]
    if not authorities.items:
        return [Finding("ca", Level.WARN, "no MtlsAuthority: the operator has not published its CA's status", (
            "it does once it leads and has loaded (or looked for) its CA",))]
    return [_authority(a, now) for a in authorities.items]


def _authority(obj: Mapping[str, Any], now: dt.datetime) -> Finding:
    name = str((obj.get("metadata") or {}).get("name") or "")
    st = obj.get("status") or {}
    conditions = {c.get("type"): c for c in st.get("conditions") or [] if isinstance(c, Mapping)}
    ready = conditions.get("Ready") or {}
    phase = str(st.get("rotationPhase") or "Stable")
    details = []
    if ready.get("status") != "True":
        reason = str(ready.get("reason") or hints.NOT_OBSERVED)
        hint = hints.for_reason(reason, {"authority": name})
        return Finding("ca", Level.FAIL, f"CA not Ready: {reason}", (
            *([str(ready.get("message"))] if ready.get("message") else []),
            f"what to do: {'; '.join(hint.actions)} (see {hint.docs})"), subject=name)
    not_after = times.parse(st.get("issuerNotAfter"))
    left = (not_after - now) if not_after else None
    summary = (f"{st.get('issuer') or 'issuer unknown'}, valid until {times.iso(not_after) or '?'}"
               f" ({times.relative(not_after, now) or '?'}), rotation {phase}")
    level = Level.OK
    if left is not None and left <= dt.timedelta(0):
        level = Level.FAIL
        details.append("the issuing CA has expired: nothing can be issued")
    elif left is not None and left < CA_EXPIRY_WARNING and phase == "Stable":
        level = Level.WARN
        details.append(f"expires within {CA_EXPIRY_WARNING.days} days and no rotation is under way (the operator "
                       f"rotates a root it made --ca-rotate-before ahead; a brought-in CA is yours to replace)")
    if phase != "Stable":
        details.append(f"root rotation in phase {phase} since {st.get('rotationSince') or '?'}")
    waiting = conditions.get("RotationWaiting") or {}
    if waiting.get("status") == "True":
        level = max(level, Level.WARN, key=_rank)
        details.append(f"the rotation waits: {waiting.get('message')}")
    anchors = [a for a in st.get("trustAnchors") or [] if isinstance(a, Mapping)]
    details.append(f"{len(anchors)} trust anchor(s): " + "; ".join(
        f"{a.get('subject')} until {a.get('notAfter')}" for a in anchors))
    return Finding("ca", level, summary, tuple(details), subject=name)


def _rank(level: Level) -> int:
    return [Level.OK, Level.WARN, Level.UNKNOWN, Level.FAIL].index(level)


# ---- identities ----

def identity_findings(identities: Read, namespace: str | None,
                      now: dt.datetime) -> tuple[Finding, tuple[NotReady, ...], int | None]:
    where = f"namespace {namespace}" if namespace else "all namespaces"
    if identities.error:
        return Finding("identities", Level.UNKNOWN, f"MtlsIdentities in {where}: {identities.error}"), (), None
    bad = []
    for obj in identities.items:
        reason = identity.problem(obj, now)
        if reason is None:
            continue
        meta = obj.get("metadata") or {}
        bad.append(NotReady(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                            reason=reason, message=str(identity.ready_condition(obj).get("message") or ""),
                            hint=hints.for_reason(reason, identity.hint_values(obj))))
    bad.sort(key=lambda n: (n.namespace, n.name))
    total = len(identities.items)
    if not bad:
        return Finding("identities", Level.OK, f"all {total} identities Ready in {where}"), (), total
    reasons: dict[str, int] = {}
    for entry in bad:
        reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    summary = (f"{len(bad)} of {total} identities not Ready in {where} ("
               + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")")
    return Finding("identities", Level.FAIL, summary), tuple(bad), total


def check(operator_namespace: str, lease_name: str, selector: str, pods: Read, lease: Read, authorities: Read,
          identities: Read, identity_namespace: str | None, now: dt.datetime) -> CheckReport:
    findings = operator_findings(pods, lease, operator_namespace, lease_name, selector, now)
    findings += authority_findings(authorities, now)
    found, not_ready, total = identity_findings(identities, identity_namespace, now)
    findings.append(found)
    return CheckReport(operator_namespace=operator_namespace, identity_namespace=identity_namespace,
                       findings=tuple(findings), not_ready=not_ready, identities_total=total)
