"""On kind: the release's life as a platform engineer lives it — `helm upgrade`, `helm uninstall`, install again,
`helm test` — with the operator running as a pod. Issued Secrets and the CA survive every step, and nothing is
reissued because the operator was replaced.

The release is the one the kind e2e installed (hack/kind-e2e.sh, values in hack/kind-values.yaml); the test leaves it
installed again, with the same values, when it ends.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import cluster
from mtls_operator import pki
from tests.kit import OPERATOR_NAMESPACE, REPO, Api, InClusterOperator, Kubectl, secret_files, wait_for

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(os.environ.get("MTLS_OPERATOR") != "in-cluster",
                       reason="needs the operator in a kind cluster: make kind-e2e"),
]
RELEASE, CA_SECRET = "mtls-operator", "mtls-operator-ca"
CHART = REPO / "charts" / "mtls-operator"
VALUES = REPO / "hack" / "kind-values.yaml"


def helm(kubeconfig: Path, *args: str) -> str:
    out = subprocess.run([str(cluster.bin_dir() / "helm"), f"--kubeconfig={kubeconfig}", "-n", OPERATOR_NAMESPACE,
                          *args], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return out.stdout


def _serial(api: Api, ns: str, name: str) -> str:
    return pki.serial_hex(pki.load_chain(secret_files(api.secret(ns, f"{name}-mtls"))["tls.crt"])[0])


def _ca(api: Api) -> bytes:
    return secret_files(api.secret(OPERATOR_NAMESPACE, CA_SECRET))["tls.crt"]


@pytest.mark.timeout(900)
def test_upgrade_uninstall_and_reinstall_keep_the_ca_and_issued_secrets(
        kubeconfig: Path, api: Api, kubectl: Kubectl, operator: InClusterOperator, ns: str) -> None:
    api.create_identity(ns, "keep", {"usages": ["server"]})
    api.wait_ready(ns, "keep", timeout=60)
    serial, ca = _serial(api, ns, "keep"), _ca(api)

    # Upgrade: a changed value rolls the operator's pod; the new pod takes over without reissuing anything.
    helm(kubeconfig, "upgrade", RELEASE, str(CHART), "--values", str(VALUES), "--set", "logFormat=text", "--wait",
         "--timeout", "5m")
    assert "--log-format=text" in kubectl("get", "deployment", "-n", OPERATOR_NAMESPACE, RELEASE, "-o",
                                          "jsonpath={.spec.template.spec.containers[0].args}").stdout
    api.create_identity(ns, "after-upgrade")
    api.wait_ready(ns, "after-upgrade", timeout=120)
    assert (_serial(api, ns, "keep"), _ca(api)) == (serial, ca)

    # Uninstall: the operator goes; what it issued, the CA, the CRDs and the identities stay.
    helm(kubeconfig, "uninstall", RELEASE, "--wait", "--timeout", "3m")
    wait_for("the operator's pods to be gone", lambda: not kubectl(
        "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout,
        timeout=120, interval=1)
    assert _ca(api) == ca
    assert _serial(api, ns, "keep") == serial
    assert api.identity(ns, "keep")["status"]["serialNumber"] == serial
    kubectl("get", "crd", "mtlsidentities.mtls-operator.io")

    # Install again with the e2e values: the same CA is picked up, nothing is reissued, new identities are served.
    helm(kubeconfig, "install", RELEASE, str(CHART), "--values", str(VALUES), "--wait", "--timeout", "5m")
    wait_for("the reinstalled operator", operator.healthy, timeout=120)
    api.create_identity(ns, "after-reinstall")
    api.wait_ready(ns, "after-reinstall", timeout=120)
    assert (_serial(api, ns, "keep"), _ca(api)) == (serial, ca)

    # The chart's own test hook proves issuance end to end from inside the cluster.
    out = helm(kubeconfig, "test", RELEASE, "--timeout", "5m", "--logs")
    print("\n" + out)
    assert "Succeeded" in out, out
