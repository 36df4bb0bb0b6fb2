"""A CA Secret deleted by mistake: the operator never mints a new root while the cluster shows one in use (issued
Secrets carry its fingerprint, the MtlsAuthority names it). It says so loudly, keeps good certificates in use, and waits
for a restored backup or an explicit approval — which rebuilds trust through the overlap phases, the old root kept in
every bundle until the new one has propagated."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from mtls_operator import ca as ca_mod
from mtls_operator import caloss, pki, rotation
from mtls_operator.config import Settings
from tests.kit import (
    GROUP,
    OPERATOR_NAMESPACE,
    VERSION,
    Api,
    OperatorProcess,
    ready_condition,
    secret_files,
    swapped_operator,
    wait_for,
)

pytestmark = pytest.mark.local_operator


def own_ca_operator(operator: OperatorProcess, ca_secret: str, namespace: str):
    """An operator with its own CA Secret, serving only the test's namespace."""
    return swapped_operator(operator, "--namespace", namespace, "--ca-secret-name", ca_secret, "--ca-propagation",
                            "6s", "--ca-grace", "3s", "--lease-duration", "4s", "--lease-name", f"lease-{ca_secret}")


def _authority(api: Api, ca_secret: str) -> dict:
    try:
        return api.custom.get_cluster_custom_object(GROUP, VERSION, "mtlsauthorities",
                                                    f"{OPERATOR_NAMESPACE}.{ca_secret}")
    except Exception:
        return {}


def _authority_ready(api: Api, ca_secret: str) -> tuple[str, str, str]:
    cond = next((c for c in _authority(api, ca_secret).get("status", {}).get("conditions", [])
                 if c["type"] == "Ready"), {})
    return cond.get("status", ""), cond.get("reason", ""), cond.get("message", "")


def _leaf(api: Api, ns: str, name: str):
    return pki.load_chain(secret_files(api.secret(ns, f"{name}-mtls"))["tls.crt"])[0]


def _bundle(api: Api, ns: str, name: str) -> list:
    return pki.load_chain(secret_files(api.secret(ns, f"{name}-mtls"))["ca.crt"])


def _assert_loud(api: Api, op: OperatorProcess, ca: str) -> str:
    """Every channel an on-call engineer might look at says so: the MtlsAuthority, an Event, the metric, the log."""
    state = wait_for("the MtlsAuthority to report the lost root", lambda: (r := _authority_ready(api, ca))[1]
                     == "CALost" and r)
    assert state[0] == "False" and caloss.ANN_APPROVE in state[2], state
    api.wait_event("default", f"{OPERATOR_NAMESPACE}.{ca}", lambda e: e.type == "Warning" and e.reason == "CALost")
    assert "mtls_operator_ca_lost 1.0" in op.metrics()
    assert "no new root is minted" in op.log()
    return state[2]


@pytest.mark.fault_timing
@pytest.mark.timeout(240)
def test_lost_root_is_never_replaced_silently_and_recovers_through_the_overlap_phases(api: Api,
                                                                                      operator: OperatorProcess,
                                                                                      ns: str) -> None:
    ca = "lost-ca"
    with own_ca_operator(operator, ca, ns) as op:
        old_root = pki.load_chain(secret_files(wait_for("the managed root", lambda: api.secret(
            OPERATOR_NAMESPACE, ca)))["tls.crt"])[0]
        api.create_identity(ns, "steady")
        serial = api.wait_ready(ns, "steady")["status"]["serialNumber"]
        wait_for("the MtlsAuthority to name the trust anchor", lambda: any(
            a["fingerprint"] == pki.fingerprint(old_root)
            for a in _authority(api, ca).get("status", {}).get("trustAnchors", [])))

        op.stop()
        api.core.delete_namespaced_secret(ca, OPERATOR_NAMESPACE)  # the mistake
        op.start()
        api.create_identity(ns, "newcomer")
        waiting = api.wait_reason(ns, "newcomer", "CALost")  # the restarted operator has decided by now
        assert caloss.ANN_APPROVE in ready_condition(waiting)["message"]
        assert api.secret(OPERATOR_NAMESPACE, ca) is None, "a new root was minted while the old one is in use"
        assert api.secret(ns, "newcomer-mtls") is None
        _assert_loud(api, op, ca)
        steady = api.ready(ns, "steady")
        assert steady and steady["status"]["serialNumber"] == serial, "a good certificate must stay in use, Ready"

        # The approval names the lost root (so one left over from an earlier loss approves nothing).
        api.custom.patch_cluster_custom_object(GROUP, VERSION, "mtlsauthorities", f"{OPERATOR_NAMESPACE}.{ca}", {
            "metadata": {"annotations": {caloss.ANN_APPROVE: pki.fingerprint(old_root)[:16]}}})
        recovered = wait_for("a new root, approved", lambda: api.secret(OPERATOR_NAMESPACE, ca), timeout=30)
        new_root = pki.load_chain(secret_files(recovered)["tls.crt"])[0]
        assert new_root != old_root
        assert pki.load_chain(secret_files(recovered)["ca.crt"]) == [old_root, new_root]  # side by side
        # Overlap: the old leaf stays while its bundle learns the new root; then it moves; then the old root goes.
        wait_for("steady's bundle to hold both roots around its old leaf", lambda: _bundle(api, ns, "steady")
                 == [old_root, new_root] and pki.serial_hex(_leaf(api, ns, "steady")) == serial, timeout=30)
        wait_for("the recovery's rotation to finish", lambda: not (api.secret(OPERATOR_NAMESPACE, ca).metadata
                                                                   .annotations or {}).get(rotation.ANN_PHASE),
                 timeout=90)
        for name in ("steady", "newcomer"):
            wait_for(f"{name} on the new root only", lambda n=name: api.ready(ns, n) and _bundle(api, ns, n)
                     == [new_root] and pki.issued_by(_leaf(api, ns, n), new_root), timeout=60)
        assert wait_for("the MtlsAuthority to be Ready again", lambda: _authority_ready(api, ca)[0] == "True")
        assert "mtls_operator_ca_lost 0.0" in op.metrics()


def _put_ca(api: Api, name: str, data: dict[str, bytes]) -> None:
    api.core.create_namespaced_secret(OPERATOR_NAMESPACE, {
        "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})


@pytest.mark.timeout(180)
def test_brought_in_ca_deleted_by_mistake_is_never_replaced_and_a_restored_backup_is_picked_up(
        api: Api, operator: OperatorProcess, ns: str) -> None:
    ca = "byo-lost-ca"
    backup = ca_mod.new_root(Settings(), dt.datetime.now(dt.UTC))  # the enterprise's own root, brought in
    _put_ca(api, ca, backup)
    with own_ca_operator(operator, ca, ns) as op:
        api.create_identity(ns, "kept")
        serial = api.wait_ready(ns, "kept")["status"]["serialNumber"]
        api.core.delete_namespaced_secret(ca, OPERATOR_NAMESPACE)  # the mistake, under a running operator
        _assert_loud(api, op, ca)
        op.restart()
        api.create_identity(ns, "waiting")
        api.wait_reason(ns, "waiting", "CALost")
        assert api.secret(OPERATOR_NAMESPACE, ca) is None, "a self-made root silently replaced the brought-in one"
        _assert_loud(api, op, ca)

        _put_ca(api, ca, backup)  # restored from the backup: picked up live, nothing reissued
        api.wait_ready(ns, "waiting")
        kept = api.ready(ns, "kept")
        assert kept and kept["status"]["serialNumber"] == serial
        assert secret_files(api.secret(OPERATOR_NAMESPACE, ca))["tls.crt"] == backup["tls.crt"]
        wait_for("the MtlsAuthority to be Ready again", lambda: _authority_ready(api, ca)[0] == "True")
