"""Proof that the local control plane is a real Kubernetes: versions, CRDs with schemas, garbage collection, service
account tokens and RBAC. Everything later stands on these."""

from __future__ import annotations

import json

import kubernetes
import pytest

from tests.kit import Api, Kubectl, unique, wait_for

SUPPORTED_MINORS = range(35, 38)  # Kubernetes 1.35-1.37, as README's support matrix and the chart's kubeVersion say


def test_versions_are_the_pinned_release(kubectl: Kubectl, control_plane) -> None:
    import cluster  # hack/cluster.py

    out = json.loads(kubectl("version", "-o", "json").stdout)
    server = out["serverVersion"]
    assert server["gitVersion"].startswith("v1.")
    assert int(server["minor"]) in SUPPORTED_MINORS
    if control_plane:  # the local control plane runs exactly the minor under test, with the same kubectl
        assert f"{server['major']}.{server['minor']}" == cluster.kube_minor()
        assert out["clientVersion"]["gitVersion"] == server["gitVersion"]


def test_crd_is_structural_and_served(kubectl: Kubectl, crd: None) -> None:
    crd_obj = json.loads(kubectl("get", "crd", "mtlsidentities.mtls-operator.io", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd_obj["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NonStructuralSchema") is None
    version = crd_obj["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}


def test_identity_round_trips_through_python_client_with_defaults(api: Api, crd: None, ns: str) -> None:
    api.create_identity(ns, "roundtrip", {"usages": ["client"]})
    got = api.identity(ns, "roundtrip")
    assert got["spec"]["usages"] == ["client"]
    assert got["spec"]["duration"] == "24h"  # schema default applied by the API server
    assert got["spec"]["privateKey"] == {"algorithm": "ECDSA", "rotationPolicy": "Always"}


@pytest.mark.parametrize("spec, message", [
    ({"duration": "1h", "renewBefore": "2h"}, "renewBefore (2h) must be shorter than duration (1h)"),
    ({"privateKey": {"algorithm": "RSA", "size": 1024}}, "RSA size must be 2048, 3072 or 4096"),
    ({"ipAddresses": ["300.1.1.1"]}, "every entry must be an IPv4 or IPv6 address"),
    ({"dnsNames": ["Not_A_Name"]}, "spec.dnsNames[0]"),
    ({"duration": "5s"}, "duration must be between 10s and 8760h"),
    ({"usages": ["client"], "dnsNames": ["a.b"]}, "dnsNames only make sense with the server usage"),
])
def test_schema_rejects_bad_specs_at_admission(api: Api, crd: None, ns: str, spec: dict, message: str) -> None:
    with pytest.raises(kubernetes.client.exceptions.ApiException) as err:
        api.create_identity(ns, unique("bad"), spec)
    assert err.value.status == 422
    assert message in err.value.body


def test_garbage_collector_deletes_owned_objects(api: Api, ns: str) -> None:
    owner = api.core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    api.core.create_namespaced_secret(ns, {"metadata": {"name": "owned", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})
    api.core.delete_namespaced_config_map("owner", ns)
    wait_for("the owned Secret to be garbage-collected", lambda: api.secret(ns, "owned") is None, timeout=60)


def test_service_account_token_authenticates_and_rbac_denies(api: Api, ns: str, kubeconfig) -> None:
    api.core.create_namespaced_service_account(ns, {"metadata": {"name": "robot"}})
    token = api.core.create_namespaced_service_account_token(
        "robot", ns, {"spec": {"expirationSeconds": 600}}).status.token

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
    config.cert_file = config.key_file = None
    config.api_key = {"BearerToken": f"Bearer {token}"}
    as_robot = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))

    review = kubernetes.client.AuthenticationV1Api(kubernetes.client.ApiClient(config)).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review.status.user_info.username == f"system:serviceaccount:{ns}:robot"

    with pytest.raises(kubernetes.client.exceptions.ApiException) as denied:
        as_robot.list_namespaced_secret(ns)
    assert denied.value.status == 403

    api.rbac.create_namespaced_role(ns, {"metadata": {"name": "read-cm"}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]})
    api.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "robot-read-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": ns}]})
    wait_for("the RoleBinding to take effect", lambda: as_robot.list_namespaced_config_map(ns) is not None)
    with pytest.raises(kubernetes.client.exceptions.ApiException) as still_denied:
        as_robot.list_namespaced_secret(ns)
    assert still_denied.value.status == 403
