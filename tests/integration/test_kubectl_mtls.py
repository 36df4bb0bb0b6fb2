"""`kubectl mtls`, the installed console script, run as a subprocess against the real control plane with the test
kubeconfig (or a ServiceAccount's, for RBAC): status of a Ready and of a failing identity, renew, the refusal of an
unconfirmed cluster-wide renew, inspect secret, check, the errors and the JSON.

Nothing here is local-only: the plugin talks to the API server like kubectl, so the module runs in kind too (where the
operator is the chart's pod, which `check` then finds)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import IN_CLUSTER
from tests.kit import OPERATOR_NAMESPACE, Api, OperatorProcess, token_kubeconfig, wait_for
from tests.unit.kubectl_mtls_material import assert_no_key_material

pytestmark = pytest.mark.integration


def _plugin() -> list[str]:
    """The entry point pip installed (what kubectl finds on PATH), else the module."""
    script = Path(sys.executable).parent / "kubectl-mtls"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtls_operator.kubectl_mtls"]


def mtls(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    """One run, with no terminal (stdin closed) and only the --kubeconfig given: no KUBECONFIG from the environment."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run([*_plugin(), *args, "--kubeconfig", str(kubeconfig)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, env=env)


def as_json(run: subprocess.CompletedProcess) -> dict:
    doc = json.loads(run.stdout)
    assert doc["exitCode"] == run.returncode, run.stdout
    return doc


def test_status_of_a_ready_and_of_a_failing_identity(api: Api, operator: OperatorProcess, kubeconfig: Path,
                                                     ns: str) -> None:
    api.create_identity(ns, "web")
    status = api.wait_ready(ns, "web")["status"]
    run = mtls(kubeconfig, "status", "web", "-n", ns)
    assert run.returncode == 0, run.stderr
    for piece in ("Ready:        True (Issued)", status["spiffeID"], status["serialNumber"], "web-mtls",
                  "Renews at:", "Issuer:       CN=mtls-operator"):
        assert piece in run.stdout, (piece, run.stdout)

    # A single-label name, with no policy granting it: PolicyDenied, the hint, the Event, exit 1.
    api.create_identity(ns, "vaulty", {"dnsNames": ["vault"]})
    api.wait_reason(ns, "vaulty", "PolicyDenied")
    api.wait_event(ns, "vaulty", lambda e: e.reason == "PolicyDenied")
    run = mtls(kubeconfig, "status", "vaulty", "-n", ns)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Ready:        False (PolicyDenied)" in run.stdout and "'vault'" in run.stdout
    assert "What to do (PolicyDenied):" in run.stdout and "MtlsIdentityPolicy" in run.stdout
    assert f"vault.{ns}.svc" in run.stdout
    assert "Warning  PolicyDenied" in run.stdout  # the Event

    doc = as_json(mtls(kubeconfig, "status", "vaulty", "-n", ns, "-o", "json"))
    assert doc["kind"] == "IdentityStatus" and doc["ok"] is False and doc["problem"] == "PolicyDenied"
    assert doc["hint"]["reason"] == "PolicyDenied" and doc["events"][-1]["reason"] == "PolicyDenied"

    run = mtls(kubeconfig, "status", "nobody", "-n", ns)
    assert run.returncode == 3 and f"mtlsidentities.mtls-operator.io {ns}/nobody not found" in run.stderr


def test_renew_changes_the_serial(api: Api, operator: OperatorProcess, kubeconfig: Path, ns: str) -> None:
    api.create_identity(ns, "again")
    serial = api.wait_ready(ns, "again")["status"]["serialNumber"]
    run = mtls(kubeconfig, "renew", "again", "-n", ns)
    assert run.returncode == 0, run.stderr
    assert f"replacing serial {serial}" in run.stdout and "rate-limited" in run.stdout
    renewed = wait_for("the requested renewal", lambda: (o := api.ready(ns, "again")) and
                       o["status"]["serialNumber"] != serial and o)
    assert renewed["status"]["revision"] == 2
    assert renewed["metadata"]["annotations"]["mtls-operator.io/renew"].startswith("kubectl-mtls@")
    doc = as_json(mtls(kubeconfig, "status", "again", "-n", ns, "-o", "json"))
    assert doc["serialNumber"] == renewed["status"]["serialNumber"] and doc["ready"]["reason"] == "Renewed"

    # Every identity of the namespace, in JSON.
    api.create_identity(ns, "other")
    api.wait_ready(ns, "other")
    doc = as_json(mtls(kubeconfig, "renew", "--all", "-n", ns, "-o", "json"))
    assert doc["kind"] == "RenewRequest" and doc["ok"] is True
    assert sorted(i["name"] for i in doc["identities"]) == ["again", "other"]


def test_renew_all_namespaces_refuses_without_a_terminal_or_yes(api: Api, operator: OperatorProcess,
                                                                kubeconfig: Path, ns: str) -> None:
    api.create_identity(ns, "untouched")
    api.wait_ready(ns, "untouched")
    run = mtls(kubeconfig, "renew", "--all", "-A")
    assert run.returncode == 2 and "pass --yes" in run.stderr and run.stdout == ""
    annotations = api.identity(ns, "untouched")["metadata"].get("annotations") or {}
    assert "mtls-operator.io/renew" not in annotations


def test_inspect_secret_verifies_against_both_bundles_and_shows_no_key(api: Api, operator: OperatorProcess,
                                                                       kubeconfig: Path, ns: str) -> None:
    api.create_identity(ns, "peer")
    status = api.wait_ready(ns, "peer")["status"]
    wait_for("the trust-bundle ConfigMap", lambda: api.core.read_namespaced_config_map("mtls-trust-bundle", ns))
    key_pem = base64.b64decode(api.secret(ns, "peer-mtls").data["tls.key"])

    run = mtls(kubeconfig, "inspect", "secret", "peer-mtls", "-n", ns)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert f"Secret {ns}/peer-mtls (kubernetes.io/tls), owned by MtlsIdentity peer" in out
    assert status["serialNumber"] in out and status["spiffeID"] in out and f"peer.{ns}.svc" in out
    assert "Private key (tls.key): ECDSA-256, matches the certificate" in out
    assert "against its own ca.crt: OK" in out
    assert f"against the cluster's trust bundle (ConfigMap {ns}/mtls-trust-bundle): OK" in out
    assert "Verdict: OK" in out

    doc = as_json(mtls(kubeconfig, "inspect", "secret", "peer-mtls", "-n", ns, "-o", "json"))
    assert doc["kind"] == "SecretInspection" and doc["ok"] is True and doc["key"]["matchesCertificate"] is True
    assert doc["verification"]["caCrt"]["verified"] is True and doc["verification"]["cluster"]["verified"] is True

    # Without that ConfigMap, the MtlsAuthority's anchors, and it says so.
    fallback = mtls(kubeconfig, "inspect", "secret", "peer-mtls", "-n", ns, "--trust-bundle", "no-such-bundle")
    assert fallback.returncode == 0, fallback.stdout
    assert f"ConfigMap {ns}/no-such-bundle not found: used the MtlsAuthority's anchors" in fallback.stdout
    # Every MtlsAuthority's anchors count (other tests of the session may have left theirs): the operator's is named.
    assert re.search(r"against the cluster's trust bundle \(MtlsAuthorit(y|ies) [^\n]*mtls-operator\.mtls-operator-ca"
                     r"[^\n]*\(trust anchors by SHA-256 fingerprint\)\): OK", fallback.stdout), fallback.stdout

    for output in (out, run.stderr, json.dumps(doc), fallback.stdout):
        assert_no_key_material(output, key_pem)


def test_check_reports_the_ca_and_the_identities_not_ready(api: Api, operator: OperatorProcess, kubeconfig: Path,
                                                           ns: str) -> None:
    api.create_identity(ns, "fine")
    api.wait_ready(ns, "fine")
    # Healthy: the leader is fresh, the CA valid (its MtlsAuthority published), every identity of the namespace Ready.
    runs = []

    def healthy() -> subprocess.CompletedProcess | None:
        runs.append(mtls(kubeconfig, "check", "-n", ns, "--operator-namespace", OPERATOR_NAMESPACE))
        return runs[-1] if runs[-1].returncode == 0 else None

    try:
        run = wait_for("a healthy check", healthy, timeout=30, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{runs[-1].stdout}{runs[-1].stderr}") from None
    assert "ca mtls-operator.mtls-operator-ca:" in run.stdout and ", rotation " in run.stdout
    assert f"all 1 identities Ready in namespace {ns}" in run.stdout
    if not IN_CLUSTER:  # the session's operator is a local process: no pods, judged by its Lease
        assert "no operator pods in mtls-operator" in run.stdout and "which is fresh" in run.stdout

    api.create_identity(ns, "denied", {"dnsNames": ["vault"]})
    api.wait_reason(ns, "denied", "PolicyDenied")
    run = mtls(kubeconfig, "check", "-n", ns)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"1 of 2 identities not Ready in namespace {ns} (PolicyDenied: 1)" in run.stdout
    assert f"{ns}/denied  PolicyDenied" in run.stdout and "Verdict: FAIL (exit 1)" in run.stdout

    doc = as_json(mtls(kubeconfig, "check", "-n", ns, "-o", "json"))
    assert doc["kind"] == "HealthCheck" and doc["verdict"] == "fail"
    levels = {f["check"]: f["level"] for f in doc["findings"]}
    assert levels["leader"] == "ok" and levels["ca"] in ("ok", "warn") and levels["identities"] == "fail"
    assert [(n["name"], n["reason"]) for n in doc["identities"]["notReady"]] == [("denied", "PolicyDenied")]


def test_errors_name_the_missing_permission(api: Api, operator: OperatorProcess, kubeconfig: Path, ns: str,
                                            tmp_path: Path) -> None:
    api.create_identity(ns, "guarded")
    api.wait_ready(ns, "guarded")
    api.service_account(ns, "robot")
    token = api.core.create_namespaced_service_account_token(
        "robot", ns, {"spec": {"expirationSeconds": 600}}).status.token
    as_robot = token_kubeconfig(kubeconfig, token, tmp_path / "robot.kubeconfig")

    run = mtls(as_robot, "status", "guarded", "-n", ns)
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"your RBAC needs verb 'get' on 'mtlsidentities.mtls-operator.io' in namespace {ns}" in run.stderr
    doc = as_json(mtls(as_robot, "renew", "guarded", "-n", ns, "-o", "json"))
    assert doc["error"]["reason"] == "Forbidden"
    assert doc["error"]["missing"] == {"verb": "patch", "resource": "mtlsidentities.mtls-operator.io",
                                       "namespace": ns}

    # Allowed to read identities but not Events: status answers and says what it could not show.
    api.rbac.create_namespaced_role(ns, {"metadata": {"name": "read-identities"}, "rules": [
        {"apiGroups": ["mtls-operator.io"], "resources": ["mtlsidentities"], "verbs": ["get", "list"]}]})
    api.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "robot-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-identities"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": ns}]})
    run = wait_for("the RoleBinding to take effect", lambda: (r := mtls(as_robot, "status", "guarded", "-n", ns))
                   and r.returncode == 0 and r, timeout=30, interval=0.5)
    assert f"Events: not shown: forbidden: you may not list events in namespace {ns}" in run.stdout

    unreachable = tmp_path / "nowhere.kubeconfig"
    unreachable.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    run = mtls(unreachable, "check")
    assert run.returncode == 3 and "cannot reach the cluster at https://127.0.0.1:9" in run.stderr
