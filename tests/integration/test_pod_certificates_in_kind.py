"""On kind, under a real kubelet: pod certificates. The kubelet makes the key on the node, asks our signer through a
PodCertificateRequest, and mounts key and chain into the pod next to the signer's ClusterTrustBundle — one projected
volume with the same three files (tls.key, tls.crt, ca.crt) a Secret-based identity has. A client holding only that
does strict mTLS with a server holding a Secret-based MtlsIdentity: one CA, two delivery modes.

Runs in the kind e2e (`make kind-e2e`, part of `make test`).
"""

from __future__ import annotations

import json
import os

import pytest

from mtls_operator import pki, podcert
from tests.integration.test_kind_workloads import _apps, _deployment, _scripts, report
from tests.kit import Api, InClusterOperator, Kubectl, secret_files, wait_for

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(os.environ.get("MTLS_OPERATOR") != "in-cluster",
                       reason="needs the operator in a kind cluster: make kind-e2e"),
]
SIGNER = podcert.DEFAULT_SIGNER


def _pod_certificate_deployment(name: str, key_type: str = "ECDSAP256", env: dict[str, str] | None = None) -> dict:
    """The client Deployment of test_kind_workloads, but its /identity is a projected volume: the pod certificate
    (key and chain written by the kubelet) and the signer's trust anchors. No Secret is involved."""
    body = _deployment(name, "client.py", secret="unused", env=env)
    body["spec"]["template"]["spec"]["volumes"][0] = {"name": "identity", "projected": {"sources": [
        {"podCertificate": {"signerName": SIGNER, "keyType": key_type, "maxExpirationSeconds": 3600,
                            "keyPath": "tls.key", "certificateChainPath": "tls.crt"}},
        {"clusterTrustBundle": {"signerName": SIGNER, "labelSelector": {}, "path": "ca.crt"}}]}}
    return body


def _requests(api: Api, ns: str) -> list[dict]:
    return api.custom.list_namespaced_custom_object("certificates.k8s.io", "v1", ns,
                                                    "podcertificaterequests")["items"]


def _logs(kubectl: Kubectl, ns: str, app: str) -> str:
    return kubectl("logs", "-n", ns, f"deployment/{app}", "--tail=-1", check=False).stdout


@pytest.mark.timeout(600)
def test_a_pod_certificate_client_does_mtls_with_a_secret_identity_server(
        api: Api, kubectl: Kubectl, operator: InClusterOperator, ns: str) -> None:
    kubectl("label", "namespace", ns, "mtls-operator.io/pod-certificates=enabled")
    _scripts(api, ns)
    for sa in ("server", "client"):
        api.service_account(ns, sa)
    api.create_identity(ns, "server", {"usages": ["server", "client"]})
    api.wait_ready(ns, "server", timeout=120)
    api.core.create_namespaced_service(ns, {"metadata": {"name": "server"}, "spec": {
        "selector": {"app": "server"}, "ports": [{"port": 8443, "targetPort": 8443}]}})
    apps = _apps(api)
    apps.create_namespaced_deployment(ns, _deployment("server", "server.py", "server-mtls"))
    apps.create_namespaced_deployment(ns, _pod_certificate_deployment("client", env={"SERVER": f"server.{ns}.svc"}))

    # The server saw the client's own ServiceAccount's SPIFFE ID; the client verified the server against the
    # ClusterTrustBundle it mounted.
    own = f"spiffe://cluster.local/ns/{ns}/sa/client"
    wait_for("an mTLS handshake from the pod-certificate client", lambda: f" {own}" in _logs(kubectl, ns, "client"),
             timeout=240, interval=2)
    lines = [line for line in _logs(kubectl, ns, "client").splitlines() if line.startswith(("OK", "FAIL"))]
    first = next(i for i, line in enumerate(lines) if line.startswith("OK"))
    failed = [line for line in lines[first:] if line.startswith("FAIL")]
    report(f"kind pod certificates: {len(lines) - first} handshakes after the first, {len(failed)} failed")
    assert not failed, failed[:5]

    # What the kubelet asked and was given: the pod's own ServiceAccount, the key only in the pod.
    issued = [r for r in _requests(api, ns) if podcert.settled(r)]
    assert issued and all(r["spec"]["serviceAccountName"] == "client" for r in issued)
    leaf = pki.load_chain(issued[0]["status"]["certificateChain"].encode())[0]
    assert pki.spiffe_ids(leaf) == (own,)
    for secret in api.core.list_namespaced_secret(ns).items:
        key = secret_files(secret).get("tls.key")
        if key:
            assert pki.load_key(key).public_key().public_numbers() != leaf.public_key().public_numbers()
    # The signer's bundle is what every identity Secret's ca.crt holds.
    server_bundle = {pki.fingerprint(c) for c in pki.load_chain(secret_files(api.secret(ns, "server-mtls"))["ca.crt"])}
    bundle = json.loads(kubectl("get", "clustertrustbundle", "-o", "json").stdout)["items"]
    ours = [b for b in bundle if b["spec"].get("signerName") == SIGNER]
    assert len(ours) == 1
    assert {pki.fingerprint(c) for c in pki.load_chain(ours[0]["spec"]["trustBundle"].encode())} == server_bundle


@pytest.mark.timeout(300)
def test_a_pod_asking_for_an_unsupported_key_is_told_why(api: Api, kubectl: Kubectl, operator: InClusterOperator,
                                                         ns: str) -> None:
    kubectl("label", "namespace", ns, "mtls-operator.io/pod-certificates=enabled")
    _scripts(api, ns)
    api.service_account(ns, "p521")
    _apps(api).create_namespaced_deployment(ns, _pod_certificate_deployment("p521", key_type="ECDSAP521",
                                                                             env={"SERVER": "nowhere"}))
    denied = wait_for("the kubelet's request denied", lambda: next(
        (r for r in _requests(api, ns) if podcert.settled(r)), None), timeout=180, interval=1)
    condition = denied["status"]["conditions"][0]
    assert (condition["type"], condition["reason"]) == ("Denied", podcert.UNSUPPORTED_KEY_TYPE)
    assert "ECDSAP256" in condition["message"]
    event = wait_for("the Warning Event on the pod", lambda: next(
        (e for e in api.core.list_namespaced_event(ns).items if e.reason == "PodCertificateDenied"), None),
        timeout=60)
    assert event.involved_object.kind == "Pod" and event.involved_object.name.startswith("p521-")
