"""`kubectl mtls status`, the pure part: an MtlsIdentity's status and Events made into a report, its verdict (shared
with `check`), its hint, and its JSON shape."""

from __future__ import annotations

import datetime as dt
import json

from mtls_operator.kubectl_mtls import hints, identity, render
from tests.unit.kubectl_mtls_material import NOW

FP = "ab" * 32


def _obj(ready: str | None = "True", reason: str = "Issued", message: str = "certificate 5f… valid",
         not_after: dt.datetime = NOW + dt.timedelta(hours=20), **meta) -> dict:
    status = {"observedGeneration": 1, "secretName": "api-mtls", "spiffeID": "spiffe://cluster.local/ns/p/sa/api",
              "serialNumber": "5f3a", "notBefore": "2026-11-26T11:55:00Z",
              "notAfter": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "renewalTime": "2026-11-27T01:00:00Z",
              "revision": 2, "issuerFingerprint": FP}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": reason, "message": message,
                                 "lastTransitionTime": "2026-11-26T11:55:01Z"}]
    return {"metadata": {"name": "api", "namespace": "p", "generation": 1, **meta}, "spec": {}, "status": status}


AUTHORITY = {"metadata": {"name": "mtls-operator.mtls-operator-ca"},
             "status": {"issuerFingerprint": FP, "issuer": "CN=mtls-operator root CA,O=cluster.local"}}


def _event(reason: str, at: str, kind: str = "Normal", message: str = "m") -> dict:
    return {"type": kind, "reason": reason, "message": message, "lastTimestamp": at, "count": 1,
            "metadata": {"creationTimestamp": at}}


def test_a_ready_identity_reports_its_certificate_and_issuer() -> None:
    events = [_event("Renewed", "2026-11-26T11:55:01Z"), _event("Issued", "2026-11-25T11:55:01Z")]
    report = identity.report(_obj(), events, [AUTHORITY], NOW)
    assert report.ok and report.problem is None and report.hint is None
    assert report.issuer == "CN=mtls-operator root CA,O=cluster.local"
    assert [e.reason for e in report.events] == ["Issued", "Renewed"]  # oldest first
    text = render.identity(report)
    for piece in ("Ready:        True (Issued)", "spiffe://cluster.local/ns/p/sa/api", "5f3a", "revision 2",
                  "(in 20h)", "sha256 abababab", "Events (last 2):"):
        assert piece in text, piece
    assert "What to do" not in text


def test_a_failing_identity_gets_the_hint_for_its_reason() -> None:
    obj = _obj("False", "PolicyDenied", "spec.dnsNames entry 'vault' is a single-label name ...")
    report = identity.report(obj, [_event("PolicyDenied", "2026-11-26T11:55:01Z", "Warning")], [], NOW)
    assert not report.ok and report.problem == "PolicyDenied"
    assert report.hint is not None and report.hint.reason == "PolicyDenied"
    text = render.identity(report)
    assert "What to do (PolicyDenied):" in text and "vault.p.svc" in text
    assert report.to_dict()["hint"]["reason"] == "PolicyDenied"


def test_verdicts_no_status_yet_expired_and_stale_generation() -> None:
    assert identity.problem(_obj(None), NOW) == hints.NOT_OBSERVED
    assert identity.problem(_obj(not_after=NOW - dt.timedelta(seconds=1)), NOW) == hints.EXPIRED
    assert identity.problem(_obj("False", ""), NOW) == "Unknown"
    stale = identity.report(_obj(generation=3), [], [], NOW)
    assert stale.ok and stale.stale and "not looked at yet" in render.identity(stale)


def test_a_deferred_renewal_is_said_with_its_hint() -> None:
    obj = _obj(message="certificate 5f… valid until x; a renewal request (mtls-operator.io/renew) is deferred by "
                       "the per-namespace rate limit until 2026-11-26T12:01:00Z",
               annotations={"mtls-operator.io/renew": "kubectl-mtls@1"})
    report = identity.report(obj, [], [], NOW)
    assert report.ok and report.renewal_deferred and report.renew_requested == "kubectl-mtls@1"
    assert report.hint is not None and report.hint.reason == hints.RENEWAL_DEFERRED
    assert "(deferred by the rate limit)" in render.identity(report)


def test_events_are_limited_to_the_newest_and_an_unreadable_list_is_said() -> None:
    events = [_event(f"E{i}", f"2026-11-26T11:{i:02d}:00Z") for i in range(10)]
    report = identity.report(_obj(), events, [], NOW, max_events=3)
    assert [e.reason for e in report.events] == ["E7", "E8", "E9"]
    report = identity.report(_obj(), [], [], NOW, events_note="not shown: forbidden: you may not list events")
    assert "Events: not shown: forbidden" in render.identity(report)


def test_the_json_shape_is_stable() -> None:
    doc = identity.report(_obj(), [_event("Issued", "2026-11-26T11:55:01Z")], [AUTHORITY], NOW).to_dict()
    assert list(doc) == ["kind", "namespace", "name", "ok", "ready", "problem", "generation", "observedGeneration",
                         "spiffeID", "secretName", "serialNumber", "notBefore", "notAfter", "renewalTime", "revision",
                         "issuer", "issuerFingerprint", "renewRequested", "renewalDeferred", "hint", "events",
                         "eventsNote"]
    assert doc["kind"] == "IdentityStatus" and doc["ready"]["status"] == "True"
    assert set(doc["events"][0]) == {"type", "reason", "message", "count", "lastSeen"}
    json.dumps(doc)


def test_an_identity_never_issued_says_so_instead_of_empty_fields() -> None:
    obj = {"metadata": {"name": "new", "namespace": "p", "generation": 1}, "spec": {},
           "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "ServiceAccountNotFound",
                                      "message": "ServiceAccount p/new does not exist"}]}}
    text = render.identity(identity.report(obj, [], [], NOW))
    assert "Certificate:  none issued yet" in text and "Serial:" not in text
    assert "kubectl create serviceaccount new -n p" in text
