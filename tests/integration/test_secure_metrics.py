"""The secure /metrics endpoint against the real API server: HTTPS, each bearer token checked by a TokenReview and
authorized by a SubjectAccessReview for `get /metrics`, which the chart's metrics-reader ClusterRole grants. And the
listen addresses are what the flags say."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import cluster
from tests.kit import REPO, Api, OperatorProcess, swapped_operator, token_kubeconfig, unique, wait_for

pytestmark = pytest.mark.local_operator


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed serving certificate; the token is what grants access
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _helm(kubeconfig: Path, *args: str) -> None:
    out = subprocess.run([str(cluster.bin_dir() / "helm"), f"--kubeconfig={kubeconfig}", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _token(api: Api, ns: str, name: str) -> str:
    api.service_account(ns, name)
    return api.core.create_namespaced_service_account_token(name, ns, {"spec": {"expirationSeconds": 600}}).status.token


@pytest.fixture
def secure_release(kubeconfig: Path, api: Api, crd: None):
    """The chart installed with metrics.secure.enabled (its pod never runs here: no nodes). Its own release name, so
    its cluster-scoped roles do not meet another test's."""
    namespace = unique("secure")
    _helm(kubeconfig, "install", "sec", str(REPO / "charts" / "mtls-operator"), "-n", namespace, "--create-namespace",
          "--set", "ca.secretName=chart-ca", "--set", "metrics.secure.enabled=true")
    yield namespace
    subprocess.run([str(cluster.bin_dir() / "helm"), f"--kubeconfig={kubeconfig}", "uninstall", "sec", "-n",
                    namespace], capture_output=True, timeout=120)


def test_secure_metrics_need_a_token_allowed_to_get_metrics(kubeconfig: Path, api: Api, operator: OperatorProcess,
                                                            secure_release: str, ns: str, tmp_path: Path) -> None:
    """The operator runs with the chart's ServiceAccount (so the chart's review RBAC is what is proven); a scraper
    bound to the chart's metrics-reader ClusterRole gets 200, another ServiceAccount 403, no or a bad token 401."""
    binding = unique("metrics-reader")
    api.rbac.create_cluster_role_binding({
        "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "sec-mtls-operator-metrics-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}]})
    reader, outsider = _token(api, ns, "prometheus"), _token(api, ns, "curious")
    as_chart = token_kubeconfig(kubeconfig, api.core.create_namespaced_service_account_token(
        "sec-mtls-operator", secure_release, {"spec": {"expirationSeconds": 3600}}).status.token,
        tmp_path / "chart.kubeconfig")
    try:
        with swapped_operator(operator, "--metrics-secure", "--metrics-bind-address", "127.0.0.2",
                              "--ca-namespace", secure_release, "--ca-secret-name", "chart-ca",
                              kubeconfig=as_chart) as op:
            url = f"https://127.0.0.2:{op.metrics_port}/metrics"
            status, body = wait_for("the secure metrics endpoint", lambda: (r := _get(url, reader))[0] == 200 and r)
            assert "mtls_operator_ca_ready" in body
            assert _get(url)[0] == 401
            assert _get(url, "not-a-token")[0] == 401
            assert _get(url, reader[:-4] + "AAAA")[0] == 401  # a tampered signature
            status, body = _get(url, outsider)
            assert status == 403 and f"system:serviceaccount:{ns}:curious" in body
            # Plain HTTP gets nothing.
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                urllib.request.urlopen(f"http://127.0.0.2:{op.metrics_port}/metrics", timeout=5).read()
            # Only the address asked for: not on 127.0.0.1. Health stays where the kit probes it.
            assert not _reachable("127.0.0.1", op.metrics_port)
            wait_for("/healthz on 127.0.0.1", op.healthy)
            # Tokens never reach the log, and the chart's RBAC was enough for the reviews.
            log = op.log()
            assert reader not in log and outsider not in log
            # (Other tests' identities it renews may name restartTargets, which the chart's RBAC leaves off by default.)
            refused = [line for line in log.splitlines()
                       if "forbidden" in line.lower() and "could not roll" not in line]
            assert "could not review" not in log and not refused, refused or log[-2000:]
    finally:
        api.rbac.delete_cluster_role_binding(binding)


def test_listen_addresses_default_to_loopback_only(operator: OperatorProcess) -> None:
    """The session's operator runs with the default addresses: /metrics and /healthz answer on 127.0.0.1 and not on
    another address of the host (127.0.0.2 stands in for it: before, both listened on every address)."""
    wait_for("metrics on 127.0.0.1", lambda: _reachable("127.0.0.1", operator.metrics_port))
    wait_for("/healthz on 127.0.0.1", operator.healthy)  # a previous test may have just restarted it
    assert not _reachable("127.0.0.2", operator.metrics_port)
    assert not _reachable("127.0.0.2", operator.health_port)
