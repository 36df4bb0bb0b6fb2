"""Replicas: only the Lease holder acts; a standby takes over when the leader goes."""

from __future__ import annotations

import pytest

from tests.kit import OPERATOR_NAMESPACE, Api, OperatorProcess, other_operator, wait_for

pytestmark = pytest.mark.local_operator

def test_standby_replica_does_nothing_until_the_leader_goes(api: Api, operator: OperatorProcess, ns: str) -> None:
    standby = other_operator(operator).start()
    try:
        wait_for("the standby to report it stands by", lambda: "mtls_operator_leader 0.0" in standby.metrics())
        assert f"-{operator.proc.pid}-" in _holder(api)

        api.create_identity(ns, "first")
        api.wait_ready(ns, "first")
        assert "issued" not in standby.log() and "standing by" in standby.log()

        operator.stop()  # a clean exit hands the Lease back at once
        wait_for("the standby to take over", lambda: "mtls_operator_leader 1.0" in standby.metrics(), timeout=30)
        assert f"-{standby.proc.pid}-" in _holder(api)
        api.create_identity(ns, "second")
        api.wait_ready(ns, "second")
        assert "issued" in standby.log()
    finally:
        standby.stop()
        if operator.proc is None:
            operator.start()


def _holder(api: Api) -> str:
    import kubernetes

    lease = kubernetes.client.CoordinationV1Api(api.client).read_namespaced_lease("mtls-operator", OPERATOR_NAMESPACE)
    return lease.spec.holder_identity or ""
