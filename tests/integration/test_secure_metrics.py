"""The secure /metrics endpoint against the real API server: HTTPS, each bearer token checked by a TokenReview and
authorized by a SubjectAccessReview for `get /metrics`, which the chart's metrics-reader ClusterRole grants. And the
listen addresses are what the flags say."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

import cluster
from tests.kit import REPO, Api, OperatorProcess, swapped_operator, unique, wait_for

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


def _chart_metrics_reader() -> dict:
    """The chart's own metrics-reader ClusterRole, so the test proves what users will bind."""
    helm = cluster.bin_dir() / "helm"
    if not helm.exists():
        pytest.skip("helm is not built")
    out = subprocess.run([str(helm), "template", "rel", str(REPO / "charts" / "mtls-operator"), "--skip-tests",
                          "--set", "metrics.secure.enabled=true"], capture_output=True, text=True, check=True).stdout
    role = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ClusterRole"
                and d["metadata"]["name"].endswith("-metrics-reader"))
    role["metadata"] = {"name": unique("metrics-reader")}
    return role


def _token(api: Api, ns: str, name: str) -> str:
    api.service_account(ns, name)
    return api.core.create_namespaced_service_account_token(name, ns, {"spec": {"expirationSeconds": 600}}).status.token


def test_secure_metrics_need_a_token_allowed_to_get_metrics(api: Api, operator: OperatorProcess, ns: str) -> None:
    role = api.rbac.create_cluster_role(_chart_metrics_reader())
    binding = unique("metrics-reader")
    api.rbac.create_cluster_role_binding({
        "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role.metadata.name},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}]})
    reader, outsider = _token(api, ns, "prometheus"), _token(api, ns, "curious")
    try:
        with swapped_operator(operator, "--metrics-secure", "--metrics-bind-address", "127.0.0.2") as op:
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
            assert op.healthy()
            # Tokens never reach the log.
            assert reader not in op.log() and outsider not in op.log()
    finally:
        api.rbac.delete_cluster_role_binding(binding)
        api.rbac.delete_cluster_role(role.metadata.name)


def test_listen_addresses_default_to_loopback_only(operator: OperatorProcess) -> None:
    """The session's operator runs with the default addresses: /metrics and /healthz answer on 127.0.0.1 and not on
    another address of the host (127.0.0.2 stands in for it: before, both listened on every address)."""
    wait_for("metrics on 127.0.0.1", lambda: _reachable("127.0.0.1", operator.metrics_port))
    assert operator.healthy()
    assert not _reachable("127.0.0.2", operator.metrics_port)
    assert not _reachable("127.0.0.2", operator.health_port)
