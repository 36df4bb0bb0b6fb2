"""Events are best effort, but never lost unseen: one the API server refuses is counted in
mtls_operator_events_dropped_total{cause="failed"}, and the identity it was about is served all the same."""

from __future__ import annotations

import re

import pytest

from tests.kit import Api, OperatorProcess, wait_for


def _dropped(operator: OperatorProcess, cause: str) -> float:
    scrape = operator.metrics("mtls_operator_events_dropped_total")
    found = re.search(rf'^mtls_operator_events_dropped_total{{cause="{cause}"}} (\S+)$', scrape, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _issued_event_refused(api: Api, ns: str) -> bool:
    import kubernetes

    try:
        api.core.create_namespaced_event(ns, {
            "metadata": {"generateName": "probe."}, "reason": "Issued", "type": "Normal", "message": "probe",
            "involvedObject": {"kind": "ConfigMap", "name": "probe", "namespace": ns}})
    except kubernetes.client.exceptions.ApiException as e:
        return e.status == 422 and "refused here" in (e.body or "")
    return False


@pytest.mark.local_operator
@pytest.mark.timeout(120)
def test_a_refused_event_is_counted_as_dropped_and_the_identity_is_served(api: Api, operator: OperatorProcess,
                                                                          ns: str) -> None:
    policy = api.deny(f"no-issued-events-{ns}", ns, "CREATE", "events", "object.reason != 'Issued'",
                      "issuance Events are refused here")
    try:
        # A policy is enforced a moment after it is created: probe until it bites.
        wait_for("the admission policy to be enforced", lambda: _issued_event_refused(api, ns), timeout=30,
                 interval=0.5)
        before = _dropped(operator, "failed")
        api.create_identity(ns, "quiet")
        api.wait_ready(ns, "quiet")
        # The counter is the process's: the log line says the refusal counted was this identity's.
        wait_for("the refusal logged", lambda: f"could not post event Issued for {ns}/quiet" in operator.log())
        wait_for("the refusal counted", lambda: _dropped(operator, "failed") >= before + 1)
        assert not [e for e in api.events(ns, "quiet") if e.reason == "Issued"]
    finally:
        api.lift(policy)
