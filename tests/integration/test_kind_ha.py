"""On kind: two replicas installed by the chart, with secure metrics — the operator as users would run it for
availability. Only the Lease holder acts; deleting its pod hands the Lease on (the terminating pod releases it on
SIGTERM) to another pod, which then serves. /metrics answers over HTTPS only to a bearer token the API server vouches
for and that is allowed `get` on /metrics (TokenReview + SubjectAccessReview), seen from a pod inside the cluster.

The release is put back to the e2e values (one replica, plain metrics) when the test ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.test_kind_helm import CHART, RELEASE, VALUES, helm
from tests.kit import OPERATOR_NAMESPACE, Api, InClusterOperator, Kubectl, wait_for

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(os.environ.get("MTLS_OPERATOR") != "in-cluster",
                       reason="needs the operator in a kind cluster: make kind-e2e"),
]

# Runs in a pod of the operator's own image (the only image on the node with Python): the status /metrics answers with
# no token, with a token the API server does not know, with a known ServiceAccount not bound to the metrics reader, and
# with this pod's own ServiceAccount, which is.
PROBE = """
import json, os, ssl, urllib.request, urllib.error
url = os.environ["URL"]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
own = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read().strip()
out = {}
for label, token in (("none", ""), ("forged", "not-a-token"), ("stranger", os.environ["STRANGER"]), ("reader", own)):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=20) as r:
            out[label] = [r.status, "mtls_operator_" in r.read().decode()]
    except urllib.error.HTTPError as e:
        out[label] = [e.code, False]
print("RESULT " + json.dumps(out))
"""


def _holder(kubectl: Kubectl) -> str:
    """The pod holding the Lease (a holder identity is the pod's name and a per-process suffix), or ""."""
    identity = kubectl("get", "lease", "-n", OPERATOR_NAMESPACE, RELEASE, "-o", "jsonpath={.spec.holderIdentity}",
                       check=False).stdout.strip()
    return next((pod for pod in _pods(kubectl) if identity.startswith(f"{pod}-")), "")


def _pods(kubectl: Kubectl) -> list[str]:
    """The operator's running pods that are not on their way out."""
    out = kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE},"
                  "app.kubernetes.io/component!=selftest", "--field-selector=status.phase=Running", "-o", "json").stdout
    return [p["metadata"]["name"] for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def _probe_metrics(kubectl: Kubectl, ns: str) -> dict[str, list]:
    reader_role = f"{RELEASE}-metrics-reader"
    kubectl("create", "serviceaccount", "-n", ns, "scraper")
    kubectl("create", "serviceaccount", "-n", ns, "stranger")
    kubectl("create", "clusterrolebinding", f"{ns}-scraper", f"--clusterrole={reader_role}",
            f"--serviceaccount={ns}:scraper")
    stranger = kubectl("create", "token", "-n", ns, "stranger").stdout.strip()
    image = kubectl("get", "deployment", "-n", OPERATOR_NAMESPACE, RELEASE, "-o",
                    "jsonpath={.spec.template.spec.containers[0].image}").stdout.strip()
    url = f"https://{RELEASE}-metrics.{OPERATOR_NAMESPACE}.svc:8080/metrics"
    overrides = {"spec": {"serviceAccountName": "scraper", "containers": [{
        "name": "probe", "image": image, "imagePullPolicy": "Never", "command": ["python", "-c", PROBE],
        "env": [{"name": "URL", "value": url}, {"name": "STRANGER", "value": stranger}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False}}]}}
    kubectl("run", "-n", ns, "probe", f"--image={image}", "--restart=Never", f"--overrides={json.dumps(overrides)}")
    phase = wait_for("the metrics probe pod to finish", lambda: kubectl(
        "get", "pod", "-n", ns, "probe", "-o", "jsonpath={.status.phase}").stdout in ("Succeeded", "Failed") and
        kubectl("get", "pod", "-n", ns, "probe", "-o", "jsonpath={.status.phase}").stdout, timeout=180, interval=1)
    logs = kubectl("logs", "-n", ns, "probe").stdout
    assert phase == "Succeeded", logs
    kubectl("delete", "clusterrolebinding", f"{ns}-scraper", check=False)
    return json.loads(logs.split("RESULT ", 1)[1])


@pytest.mark.timeout(900)
def test_two_replicas_hand_over_on_pod_deletion_and_metrics_need_an_authorized_token(
        kubeconfig: Path, api: Api, kubectl: Kubectl, operator: InClusterOperator, ns: str) -> None:
    try:
        helm(kubeconfig, "upgrade", RELEASE, str(CHART), "--values", str(VALUES), "--set", "replicaCount=2",
             "--set", "metrics.secure.enabled=true", "--wait", "--timeout", "5m")
        wait_for("two running operator pods", lambda: len(_pods(kubectl)) == 2, timeout=180, interval=1)
        leader = wait_for("a Lease holder among the pods", lambda: _holder(kubectl), timeout=120, interval=1)

        seen = _probe_metrics(kubectl, ns)
        assert seen["none"][0] == 401 and seen["forged"][0] == 401, seen
        assert seen["stranger"][0] == 403, seen
        assert seen["reader"] == [200, True], seen

        # The leader's pod goes (SIGTERM, as on a node drain): another pod — the standby, or the replacement the
        # ReplicaSet starts at once, whichever campaigns first after the release — holds the Lease and serves.
        kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, leader, "--wait=false")
        try:
            successor = wait_for("another pod to hold the Lease", lambda: (h := _holder(kubectl)) != leader and h,
                                 timeout=60, interval=0.5)
        except AssertionError as e:
            lease = kubectl("get", "lease", "-n", OPERATOR_NAMESPACE, RELEASE, "-o", "yaml", check=False).stdout
            logs = kubectl("logs", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
                           "--prefix", "--tail=20", check=False).stdout
            raise AssertionError(f"{e}\npods: {_pods(kubectl)}\nlease:\n{lease}\nlogs:\n{logs}") from e
        api.create_identity(ns, "after-handover")
        api.wait_ready(ns, "after-handover", timeout=120)
        logs = kubectl("logs", "-n", OPERATOR_NAMESPACE, successor).stdout
        assert "after-handover" in logs
    finally:
        helm(kubeconfig, "upgrade", RELEASE, str(CHART), "--values", str(VALUES), "--wait", "--timeout", "5m")
        wait_for("the operator back to one replica", lambda: len(_pods(kubectl)) == 1, timeout=180, interval=1)
