"""The pod-certificate signer against the real API server (1.37: certificates.k8s.io/v1). Requests are created here
the way the kubelet creates them (a stub CSR signed by a key that never leaves this test); the API server's own
validation of the status we write is part of what is tested. In kind the same tests run against the operator's pod,
with only the chart's RBAC (`sign` and `attest` on our signer). Pods that mount a `podCertificate` volume under a real
kubelet are in test_pod_certificates_in_kind.py."""

from __future__ import annotations

import base64
import datetime as dt
import json

import kubernetes
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

import cluster
from mtls_operator import clustertrustbundle, pki, podcert, rotation
from tests.integration.conftest import IN_CLUSTER
from tests.kit import (
    OPERATOR_NAMESPACE,
    Api,
    OperatorProcess,
    secret_files,
    swapped_operator,
    unique,
    wait_for,
)

pytestmark = pytest.mark.skipif(int(cluster.kube_minor().split(".")[1]) < 37,
                                reason="PodCertificateRequest v1 is served from Kubernetes 1.37")
SIGNER = podcert.DEFAULT_SIGNER
ENABLE = {"mtls-operator.io/pod-certificates": "enabled"}


def _create(api: Api, ns: str, body: dict) -> dict:
    return api.custom.create_namespaced_custom_object("certificates.k8s.io", "v1", ns, "podcertificaterequests", body)


def _namespace(api: Api, enabled: bool) -> str:
    name = unique("pc")
    api.core.create_namespace({"metadata": {"name": name, "labels": ENABLE if enabled else {}}})
    return name


def _request(api: Api, ns: str, key=None, annotations: dict | None = None, max_seconds: int = 3600,
             sa: str = "web") -> tuple[dict, ec.EllipticCurvePrivateKey]:
    """A PodCertificateRequest as the kubelet makes one (its pod need not exist: that is NodeRestriction's check on
    nodes, and this test is a cluster admin)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    algorithm = hashes.SHA256() if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.key_size < 384 \
        else hashes.SHA384()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "PodCertificateRequest",
            "metadata": {"generateName": "req-"},
            "spec": {"signerName": SIGNER, "podName": "web-0", "podUID": "6c2f0b1e-0000-4000-8000-000000000001",
                     "serviceAccountName": sa, "serviceAccountUID": "6c2f0b1e-0000-4000-8000-000000000002",
                     "nodeName": "node-a", "nodeUID": "6c2f0b1e-0000-4000-8000-000000000003",
                     "maxExpirationSeconds": max_seconds,
                     "stubPKCS10Request": base64.b64encode(csr.public_bytes(Encoding.DER)).decode(),
                     **({"unverifiedUserAnnotations": annotations} if annotations else {})}}
    return _create(api, ns, body), key


def _get(api: Api, ns: str, name: str) -> dict:
    return api.custom.get_namespaced_custom_object("certificates.k8s.io", "v1", ns, "podcertificaterequests", name)


def _answered(api: Api, ns: str, name: str, timeout: float = 60) -> dict:
    return wait_for(f"PodCertificateRequest {ns}/{name} answered",
                    lambda: (r := _get(api, ns, name)) and podcert.settled(r) and r, timeout=timeout, interval=0.2)


def _condition(request: dict) -> dict:
    return request["status"]["conditions"][0]


def _bundle(api: Api) -> dict | None:
    try:
        return api.custom.get_cluster_custom_object("certificates.k8s.io", "v1", "clustertrustbundles",
                                                    clustertrustbundle.name_for(SIGNER))
    except kubernetes.client.exceptions.ApiException:
        return None


def test_a_pod_gets_its_service_accounts_spiffe_id_chained_to_the_ca_and_published_anchors(api: Api, operator) -> None:
    ns = _namespace(api, enabled=True)
    created, key = _request(api, ns, annotations={podcert.ANN_DNS_NAMES: f"web.{ns}.svc"})
    answered = _answered(api, ns, created["metadata"]["name"])
    assert _condition(answered)["type"] == "Issued", answered["status"]
    status = answered["status"]
    chain = pki.load_chain(status["certificateChain"].encode())
    leaf = chain[0]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert pki.spiffe_ids(leaf) == (f"spiffe://cluster.local/ns/{ns}/sa/web",)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [f"web.{ns}.svc"]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=1)  # maxExpirationSeconds
    # Chained to the CA every identity Secret names, and the signer's ClusterTrustBundle carries exactly that bundle.
    ca_bundle = secret_files(api.secret(OPERATOR_NAMESPACE, "mtls-operator-ca"))
    roots = pki.load_chain(ca_bundle.get("ca.crt") or ca_bundle["tls.crt"])
    assert any(pki.issued_by(chain[-1], r) for r in roots)
    bundle = wait_for("the ClusterTrustBundle", lambda: _bundle(api), timeout=30)
    assert bundle["spec"]["signerName"] == SIGNER
    assert {pki.fingerprint(c) for c in pki.load_chain(bundle["spec"]["trustBundle"].encode())} == \
        {pki.fingerprint(r) for r in roots}
    # Recorded before it was handed out: a root rotation keeps the old root until this certificate has expired.
    marks = clustertrustbundle.signed_until(bundle)
    assert marks and max(marks.values()) >= leaf.not_valid_after_utc


@pytest.mark.parametrize("case", ["namespace", "key", "annotation", "name"])
def test_requests_the_signer_will_not_sign_are_denied_with_a_reason_and_an_event(api: Api, operator, case) -> None:
    ns = _namespace(api, enabled=case != "namespace")
    key = ec.generate_private_key(ec.SECP521R1()) if case == "key" else None
    annotations = {"example.com/role": "admin"} if case == "annotation" else \
        {podcert.ANN_DNS_NAMES: "vault"} if case == "name" else None
    created, _ = _request(api, ns, key=key, annotations=annotations)
    answered = _answered(api, ns, created["metadata"]["name"])
    condition = _condition(answered)
    expected = {"namespace": podcert.NAMESPACE_NOT_ENABLED, "key": podcert.UNSUPPORTED_KEY_TYPE,
                "annotation": podcert.INVALID_ANNOTATIONS, "name": podcert.POLICY_DENIED}[case]
    assert (condition["type"], condition["reason"]) == ("Denied", expected), condition
    assert not answered["status"].get("certificateChain")
    event = wait_for("the Warning Event on the pod", lambda: next(
        (e for e in api.core.list_namespaced_event(ns).items if e.reason == "PodCertificateDenied"), None))
    assert event.involved_object.kind == "Pod" and event.involved_object.name == "web-0"
    assert expected in event.message


def test_requests_for_other_signers_are_left_alone(api: Api, operator) -> None:
    ns = _namespace(api, enabled=True)
    other, _ = _request(api, ns)
    mine, _ = _request(api, ns)
    # The same request, but for another signer: ours answers its own and never touches this one.
    foreign = json.loads(json.dumps(other))
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "PodCertificateRequest",
            "metadata": {"generateName": "req-"}, "spec": {**foreign["spec"], "signerName": "example.com/other"}}
    foreign = _create(api, ns, body)
    _answered(api, ns, mine["metadata"]["name"])
    _answered(api, ns, other["metadata"]["name"])
    assert not podcert.settled(_get(api, ns, foreign["metadata"]["name"]))


@pytest.mark.local_operator
def test_answered_requests_are_never_touched_again_after_a_restart(api: Api, operator: OperatorProcess) -> None:
    ns = _namespace(api, enabled=True)
    first, _ = _request(api, ns)
    version = _answered(api, ns, first["metadata"]["name"])["metadata"]["resourceVersion"]
    operator.restart()
    second, _ = _request(api, ns)
    _answered(api, ns, second["metadata"]["name"])  # the restarted operator has listed and answered
    assert _get(api, ns, first["metadata"]["name"])["metadata"]["resourceVersion"] == version


def _allowed(api: Api, user_namespace: str, user: str, verb: str, resource: str, name: str = "",
             namespace: str = "") -> bool:
    """A SubjectAccessReview for a ServiceAccount (kubectl's `auth can-i` cannot name a signer: its name holds a /)."""
    authz = kubernetes.client.AuthorizationV1Api(api.client)
    group, _, plural = resource.rpartition("/") if "/" in resource else ("", "", resource)
    review = authz.create_subject_access_review({"spec": {
        "user": f"system:serviceaccount:{user_namespace}:{user}",
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{user_namespace}", "system:authenticated"],
        "resourceAttributes": {"group": group, "resource": plural, "verb": verb, "name": name,
                               "namespace": namespace}}})
    return review.status.allowed


@pytest.mark.skipif(not IN_CLUSTER, reason="the chart's RBAC is what is checked: kind only")
def test_the_chart_lets_the_operator_sign_only_for_its_own_signer(api: Api) -> None:
    def can(verb: str, resource: str, name: str = "", namespace: str = "") -> bool:
        return _allowed(api, OPERATOR_NAMESPACE, "mtls-operator", verb, resource, name, namespace)

    signers = "certificates.k8s.io/signers"
    assert can("sign", signers, SIGNER) and can("attest", signers, SIGNER)
    assert not can("sign", signers, "example.com/other") and not can("attest", signers, "example.com/other")
    assert not can("sign", signers, "mtls-operator.io/other")
    assert can("update", "certificates.k8s.io/clustertrustbundles", clustertrustbundle.name_for(SIGNER))
    assert not can("update", "certificates.k8s.io/clustertrustbundles", "example.com:other:x")
    assert not can("create", "certificates.k8s.io/podcertificaterequests", namespace="default")
    assert not can("delete", "certificates.k8s.io/podcertificaterequests", namespace="default")


def test_pods_cannot_create_requests_themselves(api: Api) -> None:
    """Only the kubelet (a node) creates them: a workload's ServiceAccount cannot ask for anyone's certificate."""
    ns = _namespace(api, enabled=True)
    api.service_account(ns, "web")
    assert not _allowed(api, ns, "web", "create", "certificates.k8s.io/podcertificaterequests", namespace=ns)


def _waiting(api: Api, authority: str) -> dict:
    try:
        body = api.custom.get_cluster_custom_object("mtls-operator.io", "v1alpha1", "mtlsauthorities", authority)
    except kubernetes.client.exceptions.ApiException:
        return {}
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == "RotationWaiting"), {})


@pytest.mark.local_operator
@pytest.mark.timeout(240)
def test_a_root_rotation_keeps_the_old_root_until_its_pod_certificates_expire(api: Api,
                                                                            operator: OperatorProcess) -> None:
    """Their requests are gone after 15 minutes, so only the signer's record on the ClusterTrustBundle can tell the
    rotation how long the old root is still needed."""
    ca = "podcert-rotation-ca"
    with swapped_operator(operator, "--ca-secret-name", ca, "--ca-propagation", "2s", "--ca-grace", "2s",
                          "--ca-stall", "60s", "--lease-name", f"lease-{ca}"):
        ns = _namespace(api, enabled=True)
        before, _ = _request(api, ns)
        old_leaf = pki.load_chain(_answered(api, ns, before["metadata"]["name"])["status"]["certificateChain"]
                                  .encode())[0]
        old_root = pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, ca))["tls.crt"])[0]
        assert pki.issued_by(old_leaf, old_root)
        api.core.patch_namespaced_secret(ca, OPERATOR_NAMESPACE, {"metadata": {"annotations": {
            rotation.ANN_REQUEST: dt.datetime.now(dt.UTC).isoformat()}}})
        held = wait_for("Retiring to wait for the pod certificate", lambda: (
            c := _waiting(api, f"{OPERATOR_NAMESPACE}.{ca}")) and c["reason"] == "WaitingForPodCertificates" and c,
            timeout=120, interval=0.2)
        # The record is rounded up (by a quarter of the lifetime): never before the certificate's own expiry.
        until = dt.datetime.fromisoformat(held["message"].split("the last at ")[1].split(")")[0].replace("Z", "+00:00"))
        expiry = old_leaf.not_valid_after_utc
        assert expiry <= until <= expiry + (expiry - old_leaf.not_valid_before_utc) / 4
        secret = api.secret(OPERATOR_NAMESPACE, ca)
        assert (secret.metadata.annotations or {}).get(rotation.ANN_PHASE) == rotation.Phase.RETIRING.value
        bundle = pki.load_chain(secret_files(secret)["ca.crt"])
        assert pki.fingerprint(old_root) in {pki.fingerprint(c) for c in bundle} and len(bundle) == 2
        # Meanwhile new pod certificates come from the new root, and the ClusterTrustBundle trusts both.
        after, _ = _request(api, ns)
        new_leaf = pki.load_chain(_answered(api, ns, after["metadata"]["name"])["status"]["certificateChain"]
                                  .encode())[0]
        assert not pki.issued_by(new_leaf, old_root)
        published = {pki.fingerprint(c) for c in pki.load_chain(_bundle(api)["spec"]["trustBundle"].encode())}
        assert published == {pki.fingerprint(c) for c in bundle}
