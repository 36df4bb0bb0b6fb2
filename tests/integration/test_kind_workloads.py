"""On kind, under a real kubelet: workloads that mount the operator's Secrets as volumes.

- A server and a client Deployment do mutual TLS through kubelet-mounted Secrets while leaves renew at least three
  times and the root rotates once; the operator's pod is deleted in the middle of the rotation and the new pod finishes
  it. Every handshake is counted: after the first success, none may fail.
- A restartTarget is rolled by the real Deployment controller, once per certificate.

Runs in the kind e2e (`make kind-e2e`, part of `make test`): the operator installed by the chart, in-cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from cryptography import x509

from mtls_operator import clustertrustbundle, pki, podcert, rotation
from tests.kit import OPERATOR_NAMESPACE, REPO, Api, InClusterOperator, Kubectl, secret_files, wait_for

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(os.environ.get("MTLS_OPERATOR") != "in-cluster",
                       reason="needs the operator in a kind cluster: make kind-e2e"),
]
IMAGE = os.environ.get("MTLS_IMAGE", "mtls-operator:dev")
CA_SECRET = "mtls-operator-ca"  # the chart's default

# Both sides build their TLS context from the mounted folder for every connection, so the files the kubelet swaps in
# after a renewal are picked up. The client prints one line per attempt:
#   OK <server serial> <key id of the CA that signed the server's leaf> <the SPIFFE ID the server saw> <the serial of
#   the client certificate the server saw>
# (the key id tells the old root from the new one: both carry the same name).
SERVER = '''
import socket
from cryptography import x509
from mtls_operator import pki
from mtls_operator.workload import server_context, peer_spiffe_id
listener = socket.create_server(("0.0.0.0", 8443))
while True:
    conn, _ = listener.accept()
    conn.settimeout(30)
    try:
        with conn, server_context("/identity").wrap_socket(conn, server_side=True) as tls:
            tls.recv(64)
            der = tls.getpeercert(binary_form=True)
            serial = pki.serial_hex(x509.load_der_x509_certificate(der)) if der else "-"
            tls.sendall(f"{peer_spiffe_id(tls) or 'anonymous'} {serial}".encode())
    except Exception as e:
        print("server error:", type(e).__name__, e, flush=True)
'''

CLIENT = '''
import os, socket, time
from cryptography import x509
from mtls_operator import pki
from mtls_operator.workload import client_context
host = os.environ["SERVER"]
while True:
    try:
        with socket.create_connection((host, 8443), timeout=5) as raw, \\
                client_context("/identity").wrap_socket(raw, server_hostname=host) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            signer = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()
            tls.sendall(b"hi")
            print("OK", pki.serial_hex(leaf), signer, tls.recv(256).decode(), flush=True)
    except Exception as e:
        print("FAIL", type(e).__name__, e, flush=True)
    time.sleep(0.2)
'''

# An application that cannot reload: it reads its certificate once, at start, and says which one it holds.
LEGACY = '''
import time
from mtls_operator import pki
chain = pki.load_chain(open("/identity/tls.crt", "rb").read())
print("STARTED", pki.serial_hex(chain[0]), flush=True)
while True:
    time.sleep(3600)
'''


def report(line: str) -> None:
    """A result worth reading in CI's output even when the test passes (pytest hides a passing test's prints):
    appended to the file hack/kind-e2e.sh prints at its end."""
    print(line)
    with (REPO / ".cache" / "kind-e2e-report.txt").open("a") as out:
        out.write(line.strip() + "\n")


def _deployment(name: str, script: str, secret: str, env: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"serviceAccountName": name, "terminationGracePeriodSeconds": 1, "containers": [{
                "name": name, "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["python3", f"/scripts/{script}"],
                "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                "ports": [{"containerPort": 8443}],
                "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "identity", "mountPath": "/identity", "readOnly": True},
                                 {"name": "scripts", "mountPath": "/scripts", "readOnly": True}]}],
                "volumes": [{"name": "identity", "secret": {"secretName": secret}},
                            {"name": "scripts", "configMap": {"name": "mtls-e2e-scripts"}}]}}}}


def _cluster_trust_bundle(kubectl: Kubectl) -> dict | None:
    out = kubectl("get", "clustertrustbundle", clustertrustbundle.name_for(podcert.DEFAULT_SIGNER), "-o", "json",
                  check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _apps(api: Api):
    import kubernetes

    return kubernetes.client.AppsV1Api(api.client)


def _scripts(api: Api, ns: str) -> None:
    api.core.create_namespaced_config_map(ns, {"metadata": {"name": "mtls-e2e-scripts"},
                                               "data": {"server.py": SERVER, "client.py": CLIENT,
                                                        "legacy.py": LEGACY}})


def _phase(api: Api) -> str:
    secret = api.secret(OPERATOR_NAMESPACE, CA_SECRET)
    return (secret.metadata.annotations or {}).get(rotation.ANN_PHASE, "") if secret else "?"


def _operator_pods(kubectl: Kubectl) -> list[dict]:
    out = kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/instance=mtls-operator",
                  "-o", "json").stdout
    return json.loads(out)["items"]


def _ready_pod(kubectl: Kubectl, other_than: set[str]) -> str:
    for pod in _operator_pods(kubectl):
        name = pod["metadata"]["name"]
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
        if ready and name not in other_than and not pod["metadata"].get("deletionTimestamp"):
            return name
    return ""


@pytest.mark.timeout(1200)
def test_deployments_keep_mtls_across_renewals_a_root_rotation_and_an_operator_pod_deletion(
        api: Api, kubectl: Kubectl, operator: InClusterOperator, ns: str) -> None:
    # A leaf lives 3 minutes and is renewed 2 minutes before it ends: a renewal about every minute, and the old
    # certificate stays valid long enough for the kubelet to swap the new one into the pod (up to ~90 s).
    short = {"duration": "3m", "renewBefore": "2m"}
    api.create_identity(ns, "greeter", {"usages": ["server"], **short})
    api.create_identity(ns, "caller", {"usages": ["client"], **short})
    api.wait_ready(ns, "greeter")
    api.wait_ready(ns, "caller")
    _scripts(api, ns)
    apps = _apps(api)
    apps.create_namespaced_deployment(ns, _deployment("greeter", "server.py", "greeter-mtls"))
    apps.create_namespaced_deployment(ns, _deployment("caller", "client.py", "caller-mtls",
                                                      {"SERVER": f"greeter.{ns}.svc"}))
    api.core.create_namespaced_service(ns, {"metadata": {"name": "greeter"}, "spec": {
        "selector": {"app": "greeter"}, "ports": [{"port": 8443, "targetPort": 8443}]}})
    for name in ("greeter", "caller"):
        kubectl("rollout", "status", "-n", ns, f"deployment/{name}", "--timeout=180s")

    def client_log() -> list[str]:
        return kubectl("logs", "-n", ns, "deployment/caller", "--tail=-1").stdout.splitlines()

    def served_serials() -> set[str]:
        return {line.split()[1] for line in client_log() if line.startswith("OK ")}

    def server_revision() -> int:
        return api.identity(ns, "greeter")["status"]["revision"]

    wait_for("the client's first mutual-TLS answer", served_serials, timeout=120, interval=2)

    # A root rotation, requested on the chart's CA Secret as soon as the pair talks (leaves renew about every minute
    # throughout it); the operator pod is deleted while both roots are being propagated, and its successor resumes from
    # the phase recorded in the Secret. The rotation comes early because the pod-certificate pair, next, may start only
    # once it has ended (see the assertion below).
    old_root = pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, CA_SECRET))["ca.crt"])
    assert len(old_root) == 1
    # By design, a root is retired only after the last pod certificate signed under it has expired (an hour at least):
    # in kind this module runs first (tests/integration/conftest.py), so none has been signed under this root.
    marks = clustertrustbundle.signed_until(_cluster_trust_bundle(kubectl))
    assert pki.fingerprint(old_root[0])[:16] not in marks, "pod certificates were signed before this test"
    api.core.patch_namespaced_secret(CA_SECRET, OPERATOR_NAMESPACE, {"metadata": {"annotations": {
        rotation.ANN_REQUEST: dt.datetime.now(dt.UTC).isoformat()}}})
    wait_for("the rotation to reach Propagating", lambda: _phase(api) == "Propagating", timeout=60, interval=0.5)
    victim = wait_for("the serving operator pod", lambda: _ready_pod(kubectl, set()))
    kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, victim, "--wait=false")
    successor = wait_for("a new operator pod to be Ready", lambda: _ready_pod(kubectl, {victim}), timeout=180,
                         interval=1)
    assert _phase(api) not in ("", "?"), "the rotation must still be under way when the new pod takes over"
    wait_for("the rotation to finish", lambda: _phase(api) == "", timeout=600, interval=2)
    # Its last phase has ended: the pod-certificate pair may start now and age while the rest of the suite runs.
    from tests.integration.test_pod_certificates_in_kind import begin_pair

    begin_pair(api, kubectl)
    new_root = pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, CA_SECRET))["ca.crt"])
    assert len(new_root) == 1 and new_root[0] != old_root[0]
    assert "rotation" in kubectl("logs", "-n", OPERATOR_NAMESPACE, successor, "--tail=-1").stdout.lower()

    # Leaves go on renewing from the new root: at least three renewals in all, and the client meets the newest.
    revision = wait_for("three leaf renewals of the server", lambda: (r := server_revision()) >= 4 and r,
                        timeout=300, interval=5)
    # The kubelet syncs at its own pace and may skip a certificate that was renewed again meanwhile: wait for any leaf
    # signed by the new root's key, not for one serial.
    new_key_id = new_root[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    wait_for("the client to be served a leaf from the new root", lambda: any(
        line.split()[2] == new_key_id for line in client_log() if line.startswith("OK ")), timeout=300, interval=5)
    # Four certificates met by the client: the first and three renewals. Renewals come about every minute and the
    # kubelet's sync lags by up to ~90 s, so it may have skipped one so far; the next renewal brings another.
    wait_for("the client to be served four certificates", lambda: len(served_serials()) >= 4, timeout=300, interval=5)

    lines = client_log()
    first_ok = next(i for i, line in enumerate(lines) if line.startswith("OK "))
    attempts = lines[first_ok:]
    ok = [line for line in attempts if line.startswith("OK ")]
    failed = [line for line in attempts if line.startswith("FAIL")]
    server_errors = [line for line in kubectl("logs", "-n", ns, "deployment/greeter", "--tail=-1").stdout.splitlines()
                     if line.startswith("server error")]
    report(f"kind workloads: {len(ok)} mutual-TLS handshakes through kubelet-mounted Secrets, {len(failed)} failed, "
          f"{len(served_serials())} server certificates served, server revision {revision}, one root rotation with "
          f"the operator pod {victim} deleted mid-rotation ({successor} finished it)")
    assert not failed, failed[:5]
    assert not server_errors, server_errors[:5]
    assert all(line.split()[3] == f"spiffe://cluster.local/ns/{ns}/sa/caller" for line in ok)
    assert len(served_serials()) >= 4  # the first certificate and three renewals, one of them from the new root


@pytest.mark.timeout(600)
def test_restart_target_is_rolled_by_the_deployment_controller_once_per_certificate(
        api: Api, kubectl: Kubectl, operator: InClusterOperator, ns: str) -> None:
    _scripts(api, ns)
    apps = _apps(api)
    api.service_account(ns, "legacy")
    # The Deployment first: its pod waits for the Secret, then the operator rolls it for each new certificate.
    apps.create_namespaced_deployment(ns, _deployment("legacy", "legacy.py", "legacy-mtls"))
    api.create_identity(ns, "legacy", {"usages": ["server"],
                                       "restartTargets": [{"kind": "Deployment", "name": "legacy"}]})
    first = api.wait_ready(ns, "legacy", timeout=60)["status"]["serialNumber"]

    def rolled_serials() -> list[str]:
        """The certificate each of the Deployment's ReplicaSets was rolled for, oldest first."""
        sets = apps.list_namespaced_replica_set(ns, label_selector="app=legacy").items
        sets.sort(key=lambda rs: int((rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision", "0")))
        return [((rs.spec.template.metadata.annotations or {}).get("mtls-operator.io/rolled-for-serial", "")
                 .split(".")[0]) for rs in sets]

    def running_serial() -> str:
        out = kubectl("logs", "-n", ns, "deployment/legacy", "--tail=-1", check=False).stdout
        return next((line.split()[1] for line in out.splitlines() if line.startswith("STARTED ")), "")

    def settled(serial: str) -> bool:
        status = apps.read_namespaced_deployment_status("legacy", ns).status
        return (serial in rolled_serials() and status.updated_replicas == 1 and status.ready_replicas == 1
                and (status.replicas or 0) == 1 and running_serial() == serial)

    wait_for("the Deployment rolled onto the first certificate", lambda: settled(first), timeout=240, interval=2)
    # The minimum interval between rolls (10 s in the e2e values) must pass, else the second roll is (rightly) held.
    api.patch_identity(ns, "legacy", {"metadata": {"annotations": {"mtls-operator.io/renew": "once"}}})
    second = wait_for("the renewal", lambda: (o := api.ready(ns, "legacy")) and o["status"]["serialNumber"] != first
                      and o["status"]["serialNumber"], timeout=60)
    wait_for("the Deployment rolled onto the second certificate", lambda: settled(second), timeout=240, interval=2)
    rolled = [s for s in rolled_serials() if s]
    report(f"restartTarget: ReplicaSets rolled for {rolled}; the running pod holds {running_serial()}")
    assert rolled == [first, second]  # once per certificate, in order: no extra roll, none missed
    assert apps.read_namespaced_deployment("legacy", ns).metadata.generation == 3  # created, then two rolls
