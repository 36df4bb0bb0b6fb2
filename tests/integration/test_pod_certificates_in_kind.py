"""On kind, under a real kubelet: pod certificates. The kubelet makes the key on the node, asks our signer through a
PodCertificateRequest, and mounts key and chain into the pod next to the signer's ClusterTrustBundle — one projected
volume with the same three files (tls.key, tls.crt, ca.crt) a Secret-based identity has. A client holding only that
does strict mTLS with a server holding a Secret-based MtlsIdentity: one CA, two delivery modes. That pair keeps running
to the end of the kind session, where the root rotates under it and the kubelet refreshes the client's certificate
(the e2e's chart values ask for a refresh 10 minutes into a certificate's life).

Runs in the kind e2e (`make kind-e2e`, part of `make test`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mtls_operator import pki, podcert, rotation
from tests.integration.test_kind_workloads import (
    CA_SECRET,
    _apps,
    _cluster_trust_bundle,
    _deployment,
    _phase,
    _scripts,
    report,
)
from tests.integration.test_pod_certificates import _waiting
from tests.kit import (
    OPERATOR_NAMESPACE,
    Api,
    InClusterOperator,
    Kubectl,
    only_waiting_from_here,
    secret_files,
    wait_for,
)

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


def _attempts(kubectl: Kubectl, ns: str) -> list[str]:
    """The client's lines from its first successful handshake on (see test_kind_workloads for their form)."""
    lines = [line for line in _logs(kubectl, ns, "client").splitlines() if line.startswith(("OK ", "FAIL"))]
    first = next((i for i, line in enumerate(lines) if line.startswith("OK ")), len(lines))
    return lines[first:]


def _server_errors(kubectl: Kubectl, ns: str) -> list[str]:
    """What the server failed on (a context it could not build, a handshake it refused), shown beside the client's
    failures: a client that timed out says nothing of why. Diagnosis only: the server's log also holds what happened
    before the client's first success, which the client's count leaves out."""
    return [line for line in _logs(kubectl, ns, "server").splitlines() if line.startswith("server error")]


@dataclasses.dataclass(frozen=True)
class Pair:
    namespace: str
    first: x509.Certificate  # the client's first certificate (its request is deleted by the API server after 15 min)
    started: float  # time.monotonic() of the first handshake


_PAIR: dict[str, object] = {}  # the session's pair: its starting thread, then the Pair or what went wrong


def begin_pair(api: Api, kubectl: Kubectl) -> None:
    """Starts the pair in the background, once. test_kind_workloads calls this the moment its root rotation has ended
    (no pod certificate may be signed under that root before), so the pair's certificate ages from then on, while the
    rest of that test and the suite run; the fixture below starts it itself if nobody has."""
    if "thread" in _PAIR:
        return

    def start() -> None:
        try:
            _PAIR["pair"] = _start_pair(api, kubectl)
        except BaseException as e:  # handed to the fixture, which raises it in the test that needs the pair
            _PAIR["error"] = e

    thread = threading.Thread(target=start, name="pod-certificate-pair", daemon=True)
    _PAIR["thread"] = thread
    thread.start()


@pytest.fixture(scope="session")
def pod_certificate_pair(api: Api, kubectl: Kubectl, operator: InClusterOperator) -> Pair:
    """A server with a Secret-based identity and a client with a pod certificate, talking mTLS, in a namespace of their
    own: started once (begin_pair) and left running until the session ends, so the kubelet's refresh (10 minutes in)
    comes while the other tests run."""
    begin_pair(api, kubectl)
    thread = _PAIR["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(timeout=600)
    if "error" in _PAIR:
        error = _PAIR["error"]
        raise AssertionError(f"the pod-certificate pair did not start: {error!r}") from (
            error if isinstance(error, BaseException) else None)
    pair = _PAIR.get("pair")
    assert isinstance(pair, Pair), "the pod-certificate pair did not start within 10 minutes"
    return pair


def _start_pair(api: Api, kubectl: Kubectl) -> Pair:
    ns = api.namespace("pc")
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
    attempts = wait_for("an mTLS handshake from the pod-certificate client", lambda: _attempts(kubectl, ns),
                        timeout=240, interval=2)
    return Pair(ns, _issued_chains(api, ns)[_client_serials(attempts)[0]][0], time.monotonic())


@pytest.mark.timeout(600)
def test_a_pod_certificate_client_does_mtls_with_a_secret_identity_server(
        api: Api, kubectl: Kubectl, pod_certificate_pair: Pair) -> None:
    ns = pod_certificate_pair.namespace
    # The server saw the client's own ServiceAccount's SPIFFE ID; the client verified the server against the
    # ClusterTrustBundle it mounted.
    own = f"spiffe://cluster.local/ns/{ns}/sa/client"
    attempts = _attempts(kubectl, ns)
    failed = [line for line in attempts if line.startswith("FAIL")]
    report(f"kind pod certificates: {len(attempts)} handshakes from the first, {len(failed)} failed")
    assert not failed, (failed[:5], _server_errors(kubectl, ns)[:5])
    assert all(line.split()[3] == own for line in attempts)

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


def _issued_chains(api: Api, ns: str) -> dict[str, list[x509.Certificate]]:
    """The client's answered requests, by leaf serial."""
    chains = {}
    for r in _requests(api, ns):
        if r["spec"]["serviceAccountName"] == "client" and r.get("status", {}).get("certificateChain"):
            chain = pki.load_chain(r["status"]["certificateChain"].encode())
            chains[pki.serial_hex(chain[0])] = chain
    return chains


def _client_serials(attempts: list[str]) -> list[str]:
    """The client certificates the server was shown, in the order it first saw them."""
    return list(dict.fromkeys(line.split()[4] for line in attempts if line.startswith("OK ")))


def _public_key(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _key_id(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


@pytest.mark.kind_finale
@pytest.mark.timeout(1500)
def test_pod_certificates_through_a_root_rotation_and_a_kubelet_refresh(
        api: Api, kubectl: Kubectl, pod_certificate_pair: Pair) -> None:
    """Last in the session (it leaves the rotation in Retiring, as designed, for an hour). While the pair talks: the
    root rotates — the client's projected ClusterTrustBundle gains the new root before the server's leaf moves to it —
    and the kubelet refreshes the client's certificate with a new key. No handshake of the pair fails, from its first
    to the last, and the old root stays trusted, because the last certificate it signed has not expired."""
    ns, first = pod_certificate_pair.namespace, pod_certificate_pair.first
    old_root = pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, CA_SECRET))["ca.crt"])
    assert len(old_root) == 1, "a root rotation is already under way"
    assert pki.issued_by(first, old_root[0])

    requested = time.monotonic()
    api.core.patch_namespaced_secret(CA_SECRET, OPERATOR_NAMESPACE, {"metadata": {"annotations": {
        rotation.ANN_REQUEST: dt.datetime.now(dt.UTC).isoformat()}}})
    # From here this session mostly waits for clocks: the rotation's phases, then the kubelet's refresh.
    only_waiting_from_here()
    wait_for("the rotation to reach Retiring", lambda: _phase(api) == rotation.Phase.RETIRING.value, timeout=600,
             interval=2)
    retiring = time.monotonic()
    new_root = next(c for c in pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, CA_SECRET))["ca.crt"])
                    if c != old_root[0])
    # The server now holds a leaf from the new root, and the client, whose trust comes only from the projected
    # ClusterTrustBundle, accepts it.
    wait_for("the pod-certificate client to meet the server's new-root leaf", lambda: any(
        line.split()[2] == _key_id(new_root) for line in _attempts(kubectl, ns) if line.startswith("OK ")),
        timeout=300, interval=5)

    # The kubelet's refresh (10 minutes into the first certificate's life, before or during the rotation): a new
    # request from the same pod, with a new key, answered — by whichever root signed at that moment — and the server is
    # shown the new certificate.
    serials = wait_for("the server to be shown the kubelet's refreshed certificate", lambda: (
        s := _client_serials(_attempts(kubectl, ns))) and len(s) >= 2 and s, timeout=900, interval=5)
    refreshed_at = time.monotonic()
    refreshed = _issued_chains(api, ns)[serials[1]]
    assert _public_key(refreshed[0]) != _public_key(first)
    signer = "new" if pki.issued_by(refreshed[0], new_root) else "old"
    assert signer == "new" or pki.issued_by(refreshed[0], old_root[0])

    attempts = _attempts(kubectl, ns)
    failed = [line for line in attempts if line.startswith("FAIL")]
    report(f"kind pod certificates through a kubelet refresh (signed by the {signer} root) and a root rotation: "
           f"{len(attempts)} handshakes, {len(failed)} failed; client certificates shown to the server "
           f"{len(serials)}; phase left in {_phase(api)} until the last certificate of the old root expires. Times: "
           f"the pair's age at the rotation's request {requested - pod_certificate_pair.started:.0f} s, Retiring "
           f"{retiring - requested:.0f} s later, the refreshed certificate seen at the pair's age "
           f"{refreshed_at - pod_certificate_pair.started:.0f} s")
    assert not failed, (failed[:5], _server_errors(kubectl, ns)[:5])
    # Held by design: the last certificate the old root signed is still valid, so that root stays in every bundle.
    assert _phase(api) == rotation.Phase.RETIRING.value
    assert _waiting(api, f"{OPERATOR_NAMESPACE}.{CA_SECRET}").get("reason") == "WaitingForPodCertificates"
    marks = {pki.fingerprint(c) for c in pki.load_chain(_cluster_trust_bundle(kubectl)["spec"]["trustBundle"]
                                                          .encode())}
    assert marks == {pki.fingerprint(old_root[0]), pki.fingerprint(new_root)}


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
