"""A real `helm install` into the local control plane, and the operator run as the chart's ServiceAccount: the chart's
RBAC must be enough for the whole issue/rotate flow and must deny what the operator does not need. Then `helm upgrade`
and `helm uninstall`: CRDs and issued Secrets survive, nothing of the release is left behind.

The control plane has no nodes, so the Deployment's pod never runs; the operator runs out-of-cluster with a
TokenRequest token for the chart's ServiceAccount instead — the same identity and permissions the pod would have.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import kubernetes
import pytest

import cluster
from tests.kit import REPO, Api, Kubectl, OperatorProcess, swapped_operator, token_kubeconfig, unique, wait_for

pytestmark = pytest.mark.local_operator

CHART = REPO / "charts" / "mtls-operator"


def helm(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(cluster.bin_dir() / "helm"), f"--kubeconfig={kubeconfig}", *args],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture
def release(kubeconfig: Path, api: Api, crd: None):
    namespace = unique("chart")
    helm(kubeconfig, "install", "rel", str(CHART), "-n", namespace, "--create-namespace",
         "--set", "ca.secretName=chart-ca", "--set", "logFormat=json")
    yield namespace
    helm(kubeconfig, "uninstall", "rel", "-n", namespace, check=False)


def test_chart_rbac_runs_the_whole_flow_and_denies_the_rest(kubeconfig: Path, api: Api, kubectl: Kubectl,
                                                            operator: OperatorProcess, release: str, ns: str,
                                                            tmp_path: Path) -> None:
    sa = "rel-mtls-operator"
    token = api.core.create_namespaced_service_account_token(
        sa, release, {"spec": {"expirationSeconds": 3600}}).status.token
    as_chart = token_kubeconfig(kubeconfig, token, tmp_path / "chart-sa.kubeconfig")

    # What the operator must not be able to do.
    def can(*what: str) -> str:
        return kubectl(f"--kubeconfig={as_chart}", "auth", "can-i", *what, check=False).stdout.strip()
    for denied in (("delete", "secrets", "-n", ns), ("list", "pods", "-n", ns), ("get", "configmaps", "-n", ns),
                   ("patch", "mtlsidentities.mtls-operator.io", "-n", ns), ("create", "clusterrolebindings"),
                   ("update", "leases.coordination.k8s.io/other", "-n", release), ("delete", "events", "-n", ns),
                   ("create", "mtlsidentitypolicies.mtls-operator.io"), ("impersonate", "users")):
        assert can(*denied) == "no", denied
    for allowed in (("create", "secrets", "-n", ns),
                    ("patch", "mtlsidentities.mtls-operator.io", "--subresource=status", "-n", ns),
                    ("watch", "mtlsidentitypolicies.mtls-operator.io")):
        assert can(*allowed) == "yes", allowed

    with swapped_operator(operator, "--ca-namespace", release, "--ca-secret-name", "chart-ca",
                          kubeconfig=as_chart) as chart_operator:
        wait_for("the root CA in the release namespace", lambda: api.secret(release, "chart-ca"))
        api.grant(ns, ip_addresses=["10.1.0.0/16"])
        api.create_identity(ns, "charted", {"duration": "30s", "renewBefore": "20s", "ipAddresses": ["10.1.2.3"]})
        first = api.wait_ready(ns, "charted")["status"]["serialNumber"]
        renewed = wait_for("a renewal under the chart's RBAC", lambda: (o := api.ready(ns, "charted")) and
                           o["status"]["revision"] >= 2 and o, timeout=40)
        assert renewed["status"]["serialNumber"] != first
        api.wait_event(ns, "charted", lambda e: e.reason == "Renewed")
        api.core.delete_namespaced_secret("charted-mtls", ns)
        wait_for("the deleted Secret to heal", lambda: api.secret(ns, "charted-mtls") and api.ready(ns, "charted"))
        log = chart_operator.log()
        assert not re.search(r"\b403\b (Forbidden|Reason)|\bis forbidden\b", log), log[-2000:]


def test_upgrade_and_uninstall_keep_crds_and_issued_secrets(kubeconfig: Path, api: Api, kubectl: Kubectl,
                                                            operator: OperatorProcess, release: str,
                                                            ns: str) -> None:
    api.create_identity(ns, "keeper")
    api.wait_ready(ns, "keeper")

    helm(kubeconfig, "upgrade", "rel", str(CHART), "-n", release, "--reuse-values", "--set", "logFormat=text",
         "--set", "replicaCount=2")
    dep = kubernetes.client.AppsV1Api(api.client).read_namespaced_deployment("rel-mtls-operator", release)
    assert "--log-format=text" in dep.spec.template.spec.containers[0].args
    assert dep.spec.replicas == 2
    status = json.loads(helm(kubeconfig, "status", "rel", "-n", release, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 2

    # A replica count above one without leader election is refused before anything changes.
    refused = helm(kubeconfig, "upgrade", "rel", str(CHART), "-n", release, "--reuse-values",
                   "--set", "leaderElection.enabled=false", check=False)
    assert refused.returncode != 0 and "leaderElection" in refused.stderr
    assert json.loads(helm(kubeconfig, "status", "rel", "-n", release, "-o", "json").stdout)["version"] == 2

    helm(kubeconfig, "uninstall", "rel", "-n", release)
    leftovers = kubectl("get", "all,serviceaccounts,roles,rolebindings", "-n", release,
                        "-l", "app.kubernetes.io/instance=rel", "-o", "name").stdout.split()
    assert leftovers == []
    cluster_wide = kubectl("get", "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/instance=rel",
                           "-o", "name").stdout.split()
    assert cluster_wide == []
    # What users' workloads depend on stays.
    for crd_name in ("mtlsidentities.mtls-operator.io", "mtlsidentitypolicies.mtls-operator.io"):
        found = kubectl("get", "crd", crd_name, "-o", "name").stdout.strip()
        assert found == f"customresourcedefinition.apiextensions.k8s.io/{crd_name}"
    secret = api.secret(ns, "keeper-mtls")
    assert secret is not None and base64.b64decode(secret.data["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE")
