"""Fairness between namespaces, on the real control plane: a tenant spamming the renew annotation is limited (the
request is deferred, said so, and served later), and a tenant queueing many expensive issuances does not make a newcomer
in another namespace wait for all of them. No timing thresholds: the assertions are about order and counts."""

from __future__ import annotations

import pytest

from tests.kit import Api, OperatorProcess, ready_condition, swapped_operator, wait_for

pytestmark = pytest.mark.local_operator


def _revision(api: Api, ns: str, name: str) -> int:
    return (api.identity(ns, name).get("status") or {}).get("revision", 0)


def _ready_message(api: Api, ns: str, name: str) -> str:
    return ready_condition(api.identity(ns, name)).get("message", "")


def test_renew_requests_are_rate_limited_deferred_and_served_later(api: Api, operator: OperatorProcess,
                                                                   ns: str) -> None:
    """Per identity: burst 1, then one per 6 s. The second request is deferred (Event, Ready message, no new
    certificate), and served once a token is due with the newest annotation value; the certificate stays Ready."""
    with swapped_operator(operator, "--renew-burst", "1", "--renew-interval", "6s",
                          "--renew-namespace-burst", "0"):
        api.create_identity(ns, "spam")
        api.wait_ready(ns, "spam")
        assert _revision(api, ns, "spam") == 1

        api.patch_identity(ns, "spam", {"metadata": {"annotations": {"mtls-operator.io/renew": "1"}}})
        wait_for("the first request served", lambda: _revision(api, ns, "spam") == 2)

        api.patch_identity(ns, "spam", {"metadata": {"annotations": {"mtls-operator.io/renew": "2"}}})
        api.wait_event(ns, "spam", lambda e: e.reason == "RenewalDeferred" and "per-identity" in e.message)
        wait_for("the deferral in the Ready message", lambda: "deferred" in _ready_message(api, ns, "spam"))
        assert api.ready(ns, "spam") is not None
        # More requests while deferred change nothing and add no Event.
        api.patch_identity(ns, "spam", {"metadata": {"annotations": {"mtls-operator.io/renew": "3"}}})
        assert _revision(api, ns, "spam") == 2

        # Deferred, not lost: the newest value is served once the token is due.
        def served():
            secret = api.secret(ns, "spam-mtls")
            return _revision(api, ns, "spam") == 3 and secret.metadata.annotations.get(
                "mtls-operator.io/renew-handled") == "3"
        wait_for("the deferred request served", served, timeout=30)
        wait_for("the deferral gone from the Ready message", lambda: "deferred" not in _ready_message(api, ns, "spam"))
        deferrals = [e for e in api.events(ns, "spam") if e.reason == "RenewalDeferred"]
        assert sum(e.count or 1 for e in deferrals) == 1, [e.message for e in deferrals]


def test_renew_requests_are_rate_limited_per_namespace(api: Api, operator: OperatorProcess, ns: str) -> None:
    """Per namespace: burst 2 and a long interval; three identities asking at once get two renewals, the third is
    deferred by the namespace's limit, while another namespace is not affected."""
    other = api.namespace("calm")
    with swapped_operator(operator, "--renew-namespace-burst", "2", "--renew-namespace-interval", "1h") as op:
        names = ["a", "b", "c"]
        for name in names:
            api.create_identity(ns, name)
        api.create_identity(other, "calm")
        for name in names:
            api.wait_ready(ns, name)
        api.wait_ready(other, "calm")
        for name in names:
            api.patch_identity(ns, name, {"metadata": {"annotations": {"mtls-operator.io/renew": "now"}}})
        api.patch_identity(other, "calm", {"metadata": {"annotations": {"mtls-operator.io/renew": "now"}}})
        wait_for("two renewals in the spamming namespace",
                 lambda: sorted(_revision(api, ns, n) for n in names) == [1, 2, 2])
        limited = next(n for n in names if _revision(api, ns, n) == 1)
        api.wait_event(ns, limited, lambda e: e.reason == "RenewalDeferred" and "per-namespace" in e.message)
        wait_for("the other namespace's renewal", lambda: _revision(api, other, "calm") == 2)
        assert 'mtls_operator_renew_requests_deferred_total{limit="namespace"} 1.0' in op.metrics()


def test_a_newcomer_is_not_queued_behind_another_namespaces_backlog(api: Api, operator: OperatorProcess,
                                                                    ns: str) -> None:
    """One signing slot; a namespace queues eight RSA-4096 issuances, then another namespace creates one identity.
    Served round-robin, the newcomer is Ready while most of the backlog is still waiting; with one FIFO queue it would
    be served last."""
    newcomer_ns = api.namespace("newcomer")
    backlog = [f"heavy{i}" for i in range(8)]
    with swapped_operator(operator, "--max-concurrent-issuance", "1") as op:
        for name in backlog:
            api.service_account(ns, name)
        api.service_account(newcomer_ns, "fresh")
        for name in backlog:
            api.create_identity(ns, name, {"privateKey": {"algorithm": "RSA", "size": 4096}},
                                with_service_account=False)
        api.create_identity(newcomer_ns, "fresh", with_service_account=False)
        api.wait_ready(newcomer_ns, "fresh", timeout=60)
        done = sum(1 for name in backlog if api.ready(ns, name) is not None)
        assert done < len(backlog) // 2, f"{done} of {len(backlog)} of the backlog were served before the newcomer"
        for name in backlog:
            api.wait_ready(ns, name, timeout=120)
        assert op.proc is not None
