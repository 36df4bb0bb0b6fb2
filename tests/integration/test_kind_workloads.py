"""On kind: a real server and client Deployment doing mutual TLS through the Secrets the kubelet mounts, across
rotations. Needs Docker and kind (`make kind-up kind-load kind-install kind-e2e`); skipped elsewhere.

Both sides build their TLS context from the mounted folder for every connection, so the files the kubelet swaps in
after a renewal are picked up; the client logs every attempt, and after its first success none may fail.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.kit import Api, Kubectl, wait_for

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(os.environ.get("MTLS_OPERATOR") != "in-cluster" or not shutil.which("kind"),
                       reason="needs a kind cluster with the operator in-cluster: make kind-up kind-load kind-install "
                              "kind-e2e (Docker and kind)"),
]
IMAGE = os.environ.get("MTLS_IMAGE", "mtls-operator:dev")

SERVER = '''
import socket
from mtls_operator.workload import server_context, peer_spiffe_id
listener = socket.create_server(("0.0.0.0", 8443))
while True:
    conn, _ = listener.accept()
    try:
        with server_context("/identity").wrap_socket(conn, server_side=True) as tls:
            tls.recv(64)
            tls.sendall((peer_spiffe_id(tls) or "anonymous").encode())
    except Exception as e:
        print("server error:", type(e).__name__, e, flush=True)
'''

CLIENT = '''
import os, socket, time
from mtls_operator.workload import client_context
host = os.environ["SERVER"]
while True:
    try:
        with socket.create_connection((host, 8443), timeout=5) as raw, \\
                client_context("/identity").wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"hi")
            print("OK", tls.getpeercert()["serialNumber"], tls.recv(256).decode(), flush=True)
    except Exception as e:
        print("FAIL", type(e).__name__, e, flush=True)
    time.sleep(0.5)
'''


def _deployment(name: str, script: str, secret: str, env: dict[str, str]) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"serviceAccountName": name, "containers": [{
                "name": name, "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["python", f"/scripts/{script}"],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "ports": [{"containerPort": 8443}],
                "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "identity", "mountPath": "/identity", "readOnly": True},
                                 {"name": "scripts", "mountPath": "/scripts", "readOnly": True}]}],
                "volumes": [{"name": "identity", "secret": {"secretName": secret}},
                            {"name": "scripts", "configMap": {"name": "mtls-demo-scripts"}}]}}}}


@pytest.mark.timeout(900)
def test_server_and_client_deployments_keep_talking_across_rotations(api: Api, kubectl: Kubectl, operator,
                                                                     ns: str) -> None:
    # Renewed every minute or so; the old certificate stays valid two more minutes, time for the kubelet to swap it.
    short = {"duration": "3m", "renewBefore": "2m"}
    api.create_identity(ns, "greeter", {"usages": ["server"], **short})
    api.create_identity(ns, "caller", {"usages": ["client"], **short})
    api.wait_ready(ns, "greeter")
    api.wait_ready(ns, "caller")
    api.core.create_namespaced_config_map(ns, {"metadata": {"name": "mtls-demo-scripts"},
                                               "data": {"server.py": SERVER, "client.py": CLIENT}})
    import kubernetes

    apps = kubernetes.client.AppsV1Api(api.client)
    apps.create_namespaced_deployment(ns, _deployment("greeter", "server.py", "greeter-mtls", {}))
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

    # Three server certificates seen by the client: two rotations carried through the kubelet's Secret volume.
    wait_for("the client to see three server certificates", lambda: len(served_serials()) >= 3, timeout=600,
             interval=5)
    lines = client_log()
    first_ok = next(i for i, line in enumerate(lines) if line.startswith("OK "))
    failures = [line for line in lines[first_ok:] if line.startswith("FAIL")]
    assert not failures, failures[:5]
    assert all(line.endswith(f"spiffe://cluster.local/ns/{ns}/sa/caller") for line in lines[first_ok:]
               if line.startswith("OK "))
    assert api.identity(ns, "caller")["status"]["revision"] >= 3
