"""`kubectl mtls check`, the pure verdicts: pods and Lease judged together, the CA from its MtlsAuthority, the
identities that are not Ready, the overall level and exit code, and the JSON shape."""

from __future__ import annotations

import datetime as dt

from mtls_operator.kubectl_mtls import exitcodes, health, render
from mtls_operator.kubectl_mtls.health import Level, Read
from tests.unit.kubectl_mtls_material import NOW

SELECTOR = "app.kubernetes.io/name=mtls-operator"


def _ts(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease(age: float = 2, holder: str = "mtls-operator-7d9-1-abc123", duration: int = 15) -> Read:
    return Read(items=[{"spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                                 "renewTime": _ts(NOW - dt.timedelta(seconds=age))}}])


def _pod(name: str, ready: bool = True, restarts: int = 0) -> dict:
    return {"metadata": {"name": name},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}],
                       "containerStatuses": [{"restartCount": restarts}]}}


def _authority(ready: bool = True, not_after: dt.datetime = NOW + dt.timedelta(days=3000), phase: str = "Stable",
               reason: str = "CAValid", waiting: str = "") -> dict:
    conditions = [{"type": "Ready", "status": str(ready), "reason": reason, "message": "m"},
                  {"type": "RotationWaiting", "status": str(bool(waiting)), "reason": "x", "message": waiting}]
    return {"metadata": {"name": "mtls-operator.mtls-operator-ca"},
            "status": {"issuer": "CN=root", "issuerNotAfter": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "rotationPhase": phase, "rotationSince": None, "conditions": conditions,
                       "trustAnchors": [{"subject": "CN=root", "fingerprint": "ab",
                                         "notAfter": "2036-01-01T00:00:00Z"}]}}


def _identity(name: str, ns: str = "p", ready: str | None = "True", reason: str = "Issued") -> dict:
    status = {"notAfter": _ts(NOW + dt.timedelta(hours=3))}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": reason, "message": f"{name} says"}]
    return {"metadata": {"name": name, "namespace": ns}, "spec": {}, "status": status}


def _check(pods: Read | None = None, lease: Read | None = None, authorities: Read | None = None,
           identities: Read | None = None, namespace: str | None = None) -> health.CheckReport:
    pods = pods if pods is not None else Read(items=[_pod("mtls-operator-7d9")])
    return health.check("mtls-operator", "mtls-operator", SELECTOR, pods, lease or _lease(),
                        authorities or Read(items=[_authority()]), identities or Read(items=[_identity("a")]),
                        namespace, NOW)


def _finding(report: health.CheckReport, check: str) -> health.Finding:
    return next(f for f in report.findings if f.check == check)


def test_a_healthy_cluster_is_ok_and_names_the_leader_pod() -> None:
    report = _check()
    assert report.level is Level.OK and report.exit_code == exitcodes.OK
    pods = _finding(report, "pods")
    assert pods.summary == "1 of 1 operator pods Ready in mtls-operator"
    assert pods.details == ("mtls-operator-7d9: Ready, Running, 0 restarts (leader)",)
    assert _finding(report, "leader").summary.startswith("mtls-operator-7d9-1-abc123, renewed 2s ago")
    assert "Verdict: OK (exit 0)" in render.check(report)


def test_no_pods_is_fine_when_a_fresh_lease_shows_the_operator_runs_elsewhere() -> None:
    report = _check(pods=Read())
    pods = _finding(report, "pods")
    assert pods.level is Level.OK and "outside the cluster" in pods.details[0]
    assert report.exit_code == exitcodes.OK
    # ... and not fine when nothing leads either.
    report = _check(pods=Read(), lease=Read(missing=True))
    assert _finding(report, "leader").level is Level.FAIL and _finding(report, "pods").level is Level.WARN
    assert report.exit_code == exitcodes.NOT_OK


def test_a_stale_or_released_lease_fails() -> None:
    stale = _check(lease=_lease(age=40))
    leader = _finding(stale, "leader")
    assert leader.level is Level.FAIL and "stale: last renewed 40s ago, lease 15s" in leader.summary
    released = _finding(_check(lease=_lease(holder="")), "leader")
    assert released.level is Level.FAIL and "released" in released.summary
    # A missing Lease with Ready pods: leader election may be off. Worth saying, not failing.
    assert _finding(_check(lease=Read(missing=True)), "leader").level is Level.WARN


def test_pods_not_ready() -> None:
    some = _check(pods=Read(items=[_pod("a-1"), _pod("a-2", ready=False, restarts=7)]))
    assert _finding(some, "pods").level is Level.WARN and "a-2: not Ready, Running, 7 restarts" in \
        _finding(some, "pods").details
    none = _check(pods=Read(items=[_pod("a-1", ready=False)]))
    assert _finding(none, "pods").level is Level.FAIL and none.exit_code == exitcodes.NOT_OK


def test_the_ca_lost_expiring_expired_rotating_and_waiting() -> None:
    lost = _finding(_check(authorities=Read(items=[_authority(False, reason="CALost")])), "ca")
    assert lost.level is Level.FAIL and lost.summary == "CA not Ready: CALost"
    assert any("replace-lost-root" in d and "mtls-operator.mtls-operator-ca" in d for d in lost.details)
    soon = _finding(_check(authorities=Read(items=[_authority(not_after=NOW + dt.timedelta(days=10))])), "ca")
    assert soon.level is Level.WARN and "expires within 30 days" in soon.details[0]
    rotating = _finding(_check(authorities=Read(items=[_authority(not_after=NOW + dt.timedelta(days=10),
                                                                  phase="Propagating")])), "ca")
    assert rotating.level is Level.OK and "rotation Propagating" in rotating.summary
    expired = _finding(_check(authorities=Read(items=[_authority(not_after=NOW - dt.timedelta(days=1))])), "ca")
    assert expired.level is Level.FAIL
    waiting = _finding(_check(authorities=Read(items=[_authority(phase="Reissuing", waiting="3 Secrets")])), "ca")
    assert waiting.level is Level.WARN and "the rotation waits: 3 Secrets" in waiting.details
    assert _finding(_check(authorities=Read()), "ca").level is Level.WARN


def test_identities_not_ready_are_listed_with_their_hints_and_fail() -> None:
    items = [_identity("b", "q", "False", "PolicyDenied"), _identity("a"), _identity("c", "p", None),
             _identity("a", "q", "False", "CALost")]
    report = _check(identities=Read(items=items), namespace=None)
    found = _finding(report, "identities")
    assert found.level is Level.FAIL
    assert found.summary == ("3 of 4 identities not Ready in all namespaces (CALost: 1, NotObserved: 1, "
                             "PolicyDenied: 1)")
    assert [(n.namespace, n.name, n.reason) for n in report.not_ready] == [
        ("p", "c", "NotObserved"), ("q", "a", "CALost"), ("q", "b", "PolicyDenied")]
    assert report.not_ready[2].hint.reason == "PolicyDenied"
    text = render.check(report)
    assert "q/b  PolicyDenied  b says" in text and "Verdict: FAIL (exit 1)" in text
    assert report.exit_code == exitcodes.NOT_OK
    ok = _check(identities=Read(items=[_identity("a")]), namespace="p")
    assert _finding(ok, "identities").summary == "all 1 identities Ready in namespace p"


def test_what_could_not_be_read_is_unknown_and_exits_3_unless_something_failed() -> None:
    forbidden = Read(error="forbidden: you may not list pods in namespace mtls-operator")
    report = _check(pods=forbidden)
    assert _finding(report, "pods").level is Level.UNKNOWN
    assert report.level is Level.UNKNOWN and report.exit_code == exitcodes.API_ERROR
    report = _check(pods=forbidden, identities=Read(items=[_identity("x", ready="False", reason="InvalidSpec")]))
    assert report.exit_code == exitcodes.NOT_OK


def test_the_json_shape_is_stable() -> None:
    doc = _check(identities=Read(items=[_identity("b", "q", "False", "PolicyDenied")])).to_dict()
    assert list(doc) == ["kind", "verdict", "ok", "operatorNamespace", "identityNamespace", "findings", "identities"]
    assert doc["kind"] == "HealthCheck" and doc["verdict"] == "fail" and doc["ok"] is False
    assert [f["check"] for f in doc["findings"]] == ["pods", "leader", "ca", "identities"]
    assert set(doc["findings"][0]) == {"check", "subject", "level", "summary", "details"}
    assert set(doc["identities"]) == {"total", "notReady"}
    assert set(doc["identities"]["notReady"][0]) == {"namespace", "name", "reason", "message", "hint"}
