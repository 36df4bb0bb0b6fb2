"""The Helm chart, rendered offline with the built helm: lint, least-privilege RBAC, a locked-down pod, a schema that
refuses bad values, and CRDs that never drift from crds/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

import cluster
from tests.kit import REPO

CHART = REPO / "charts" / "mtls-operator"


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = cluster.bin_dir() / "helm"
    if not binary.exists():
        pytest.skip(f"helm is not built ({binary}); run `make bin`")
    return binary


def render(helm: Path, *sets: str, namespace: str = "mtls-system", tests: bool = False) -> list[dict]:
    """The chart's manifests; `helm test` hooks only with tests=True (they are not the operator's)."""
    args = [str(helm), "template", "rel", str(CHART), "-n", namespace, *([] if tests else ["--skip-tests"])]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_error(helm: Path, *sets: str) -> str:
    args = [str(helm), "template", "rel", str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode != 0, f"accepted {sets}"
    return out.stderr


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean(helm: Path) -> None:
    out = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_chart_crds_are_the_top_level_crds() -> None:
    top = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == top, "charts/mtls-operator/crds drifted from crds/: run `make crds-sync`"


def test_pod_is_locked_down(helm: Path) -> None:
    deployment = by_kind(render(helm), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {p["name"] for p in container["ports"]} == {"metrics", "health"}
    assert "--ca-namespace=mtls-system" in container["args"]
    assert "--leader-election" in container["args"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_without_leader_election_the_old_pod_goes_first(helm: Path) -> None:
    deployment = by_kind(render(helm, "leaderElection.enabled=false"), "Deployment")[0]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--no-leader-election" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _users_role(doc: dict) -> bool:
    """A ClusterRole for the cluster's users, gathered by Kubernetes' view/edit/admin: never the operator's."""
    return any(label.startswith(AGGREGATE) for label in (doc["metadata"].get("labels") or {}))


def _rules(docs: list[dict], kind: str) -> list[dict]:
    return [r for d in by_kind(docs, kind) if not _users_role(d) for r in d["rules"]]


def test_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm)
    all_rules = _rules(docs, "ClusterRole") + _rules(docs, "Role")
    for rule in all_rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    granted = {(g, r, v) for rule in all_rules for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    expected = {
        ("mtls-operator.io", "mtlsidentities", "list"), ("mtls-operator.io", "mtlsidentities", "watch"),
        ("mtls-operator.io", "mtlsidentities/status", "patch"),
        ("mtls-operator.io", "mtlsidentitypolicies", "list"), ("mtls-operator.io", "mtlsidentitypolicies", "watch"),
        ("mtls-operator.io", "mtlsauthorities", "create"), ("mtls-operator.io", "mtlsauthorities/status", "patch"),
        ("mtls-operator.io", "mtlsauthorities", "get"),  # its own only: the lost-root record and approval
        ("", "secrets", "get"), ("", "secrets", "list"), ("", "secrets", "watch"), ("", "secrets", "create"),
        ("", "secrets", "update"),
        ("", "serviceaccounts", "get"), ("", "serviceaccounts", "list"), ("", "serviceaccounts", "watch"),
        ("", "configmaps", "list"), ("", "configmaps", "watch"), ("", "configmaps", "create"),
        ("", "configmaps", "update"),
        ("", "events", "create"),
        ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "update"),
        ("coordination.k8s.io", "leases", "create"),
        # Pod certificates: watch and answer our signer's requests; its ClusterTrustBundle; opted-in namespaces.
        ("certificates.k8s.io", "podcertificaterequests", "get"),
        ("certificates.k8s.io", "podcertificaterequests", "list"),
        ("certificates.k8s.io", "podcertificaterequests", "watch"),
        ("certificates.k8s.io", "podcertificaterequests/status", "patch"),
        ("certificates.k8s.io", "signers", "sign"), ("certificates.k8s.io", "signers", "attest"),
        ("certificates.k8s.io", "clustertrustbundles", "list"), ("certificates.k8s.io", "clustertrustbundles", "watch"),
        ("certificates.k8s.io", "clustertrustbundles", "create"), ("certificates.k8s.io", "clustertrustbundles", "get"),
        ("certificates.k8s.io", "clustertrustbundles", "update"),
        ("", "namespaces", "get"), ("", "namespaces", "list"), ("", "namespaces", "watch"),
    }
    assert granted == expected
    # Signing and attesting for our signer only; the bundle rewritten by name only.
    signers = [r for r in _rules(docs, "ClusterRole") if r["resources"] == ["signers"]]
    assert signers and all(r.get("resourceNames") == ["mtls-operator.io/spiffe"] for r in signers)
    bundle_writes = [r for r in _rules(docs, "ClusterRole") if r["resources"] == ["clustertrustbundles"]
                     and "update" in r["verbs"]]
    assert bundle_writes and all(r.get("resourceNames") == ["mtls-operator.io:spiffe:trust-anchors"]
                                 for r in bundle_writes)
    # The lease can be read and renewed by name only.
    lease_rules = [r for r in _rules(docs, "Role") if r["resources"] == ["leases"] and "update" in r["verbs"]]
    assert lease_rules and all(r.get("resourceNames") == ["mtls-operator"] for r in lease_rules)
    # The MtlsAuthority is read by name only (the lost-root check).
    authority_reads = [r for r in _rules(docs, "ClusterRole") if r["resources"] == ["mtlsauthorities"]
                       and "get" in r["verbs"]]
    assert authority_reads and all(r.get("resourceNames") == ["mtls-system.mtls-operator-ca"] for r in authority_reads)
    # Bindings name only the chart's own ServiceAccount.
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-mtls-operator",
                                        "namespace": "mtls-system"}]


def test_rbac_rules_each_carry_a_reason() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text() + (CHART / "templates" / "_helpers.tpl").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[i - 1].strip().startswith("#"), f"rule without a one-line reason: {line.strip()}"


def test_watched_namespaces_get_roles_not_a_cluster_role(helm: Path) -> None:
    docs = render(helm, "watchNamespaces={shop,bank}")
    cluster_roles = [r for r in by_kind(docs, "ClusterRole") if not _users_role(r)]
    assert [r["metadata"]["name"] for r in cluster_roles] == ["rel-mtls-operator-policies"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert {("shop", "rel-mtls-operator"), ("bank", "rel-mtls-operator")} <= roles
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=shop" in args and "--namespace=bank" in args


def test_service_monitor_is_optional(helm: Path) -> None:
    assert not by_kind(render(helm), "ServiceMonitor")
    # Scraped also while not ready: that is when the CA's and the lease's metrics matter most.
    assert by_kind(render(helm), "Service")[0]["spec"]["publishNotReadyAddresses"] is True
    monitor = by_kind(render(helm, "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]


@pytest.mark.parametrize("bad, fragment", [
    ("replicaCount=2,leaderElection.enabled=false", "leaderElection"),
    ("replicaCount=0", "/replicaCount"),
    ("ca.key=DSA-1024", "/ca/key"),
    ("ca.lifetime=ten years", "/ca/lifetime"),
    ("logFormat=xml", "/logFormat"),
    ("trustDomain=spiffe://x", "/trustDomain"),
    ("certificates.minDuration=1d", "/certificates/minDuration"),
    ("watchNamespaces={Bad_NS}", "/watchNamespaces"),
    ("metrics.port=70000", "/metrics/port"),
    ("unknownKey=1", "unknownKey"),
    ("tests.timeout=2 minutes", "/tests/timeout"),
    ("metrics.bindAddress=a b", "/metrics/bindAddress"),
    ("health.bindAddress=$(rm)", "/health/bindAddress"),
    ("metrics.secure.enabled=yes", "/metrics/secure/enabled"),
    ("renewRequests.burst=-1", "/renewRequests/burst"),
    ("renewRequests.interval=1 minute", "/renewRequests/interval"),
])
def test_schema_rejects_bad_values(helm: Path, bad: str, fragment: str) -> None:
    assert fragment in render_error(helm, bad)


def test_restart_targets_rbac_only_when_enabled(helm: Path) -> None:
    def apps_rules(docs):
        return [r for r in _rules(docs, "ClusterRole") + _rules(docs, "Role") if r["apiGroups"] == ["apps"]]
    assert apps_rules(render(helm)) == []
    rules = apps_rules(render(helm, "restartTargets.enabled=true"))
    assert rules and all(set(r["verbs"]) == {"get", "patch"} for r in rules)


def _test_hooks(docs: list[dict]) -> dict[str, dict]:
    hooks = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    return {d["kind"]: d for d in hooks}


def test_helm_test_hook_is_least_privilege_and_temporary(helm: Path) -> None:
    hooks = _test_hooks(render(helm, tests=True))
    assert set(hooks) == {"ServiceAccount", "Role", "RoleBinding", "Pod"}
    for doc in hooks.values():
        assert doc["metadata"]["namespace"] == "mtls-system"
        # The rights go when the test has passed; the finished Pod (which holds none) stays for `helm test --logs`.
        policy = "before-hook-creation" if doc["kind"] == "Pod" else "before-hook-creation,hook-succeeded"
        assert doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == policy
    weight = {kind: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for kind, d in hooks.items()}
    assert weight["ServiceAccount"] < weight["Pod"] and weight["Role"] < weight["Pod"]

    name = hooks["ServiceAccount"]["metadata"]["name"]
    pod = hooks["Pod"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    secret = next(a.split("=", 1)[1] for a in args if a.startswith("--secret-name="))
    assert args[0] == "selftest" and f"--service-account={name}" in args and "--namespace=mtls-system" in args
    assert "--trust-domain=cluster.local" in args and "--timeout=120s" in args
    assert pod["serviceAccountName"] == name and pod["restartPolicy"] == "Never"
    assert container["image"] == by_kind(render(helm), "Deployment")[0]["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True

    # Namespaced, no wildcards; identities in its own namespace; of Secrets only the one its identity writes.
    rules = hooks["Role"]["rules"]
    assert rules == [
        {"apiGroups": ["mtls-operator.io"], "resources": ["mtlsidentities"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"]},
    ]
    assert hooks["RoleBinding"]["roleRef"]["name"] == hooks["Role"]["metadata"]["name"]
    assert hooks["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "mtls-system"}]


def test_helm_test_runs_where_the_operator_serves(helm: Path) -> None:
    elsewhere = _test_hooks(render(helm, "watchNamespaces={shop,bank}", tests=True))
    assert {d["metadata"]["namespace"] for d in elsewhere.values()} == {"shop"}
    served = _test_hooks(render(helm, "watchNamespaces={bank,mtls-system}", tests=True))
    assert {d["metadata"]["namespace"] for d in served.values()} == {"mtls-system"}


def test_helm_test_can_be_left_out(helm: Path) -> None:
    assert not _test_hooks(render(helm, "tests.enabled=false", tests=True))


def _container(docs: list[dict]) -> dict:
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_metrics_and_health_listen_on_the_pod_ip(helm: Path) -> None:
    """Not on every address of the pod: the kubelet probes the pod IP, the Service targets it; the binary's own
    default (loopback) would fail the probes, so the chart always says where."""
    container = _container(render(helm))
    assert "--metrics-bind-address=$(POD_IP)" in container["args"]
    assert "--health-bind-address=$(POD_IP)" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # $(POD_IP) is expanded only from a variable defined before use in the container: it is in env, not from a file.
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    args = _container(render(helm, "metrics.bindAddress=0.0.0.0", "health.bindAddress=::"))["args"]
    assert "--metrics-bind-address=0.0.0.0" in args and "--health-bind-address=::" in args


def test_renew_request_limits_are_passed(helm: Path) -> None:
    args = _container(render(helm, "renewRequests.burst=0", "renewRequests.namespaceInterval=30s"))["args"]
    assert {"--renew-burst=0", "--renew-interval=1m", "--renew-namespace-burst=10",
            "--renew-namespace-interval=30s"} <= set(args)


def test_secure_metrics_rbac_reader_role_and_service_monitor(helm: Path) -> None:
    plain = render(helm, "metrics.serviceMonitor.enabled=true")
    names = {r["metadata"]["name"] for r in by_kind(plain, "ClusterRole")}
    assert "rel-mtls-operator-metrics-auth" not in names and "rel-mtls-operator-metrics-reader" not in names
    assert "--metrics-secure" not in _container(plain)["args"]

    docs = render(helm, "metrics.secure.enabled=true", "metrics.serviceMonitor.enabled=true")
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    # Exactly the two reviews, create only: no read of anything.
    assert roles["rel-mtls-operator-metrics-auth"]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]
    binding = next(b for b in by_kind(docs, "ClusterRoleBinding")
                   if b["metadata"]["name"] == "rel-mtls-operator-metrics-auth")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-mtls-operator", "namespace": "mtls-system"}]
    # What users bind scrapers to: get /metrics, nothing else, bound to nobody by the chart.
    assert roles["rel-mtls-operator-metrics-reader"]["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert not any(b["roleRef"]["name"].endswith("-metrics-reader") for b in by_kind(docs, "ClusterRoleBinding"))
    container = _container(docs)
    assert "--metrics-secure" in container["args"]
    assert not any(a.startswith("--metrics-cert-dir") for a in container["args"])
    endpoint = by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}

    with_cert = render(helm, "metrics.secure.enabled=true", "metrics.secure.certSecret=metrics-tls")
    spec = by_kind(with_cert, "Deployment")[0]["spec"]["template"]["spec"]
    assert "--metrics-cert-dir=/var/run/metrics-tls" in spec["containers"][0]["args"]
    assert {"name": "metrics-tls", "secret": {"secretName": "metrics-tls", "defaultMode": 0o440}} in spec["volumes"]


def test_users_roles_are_aggregated_into_view_and_edit_and_bound_to_nobody(helm: Path) -> None:
    docs = render(helm)
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole") if _users_role(d)}
    assert set(roles) == {"rel-mtls-operator-view", "rel-mtls-operator-edit"}
    view, edit = roles["rel-mtls-operator-view"], roles["rel-mtls-operator-edit"]
    assert {k for k in view["metadata"]["labels"] if k.startswith(AGGREGATE)} == {
        AGGREGATE + "view", AGGREGATE + "edit", AGGREGATE + "admin"}
    assert {k for k in edit["metadata"]["labels"] if k.startswith(AGGREGATE)} == {AGGREGATE + "edit",
                                                                                 AGGREGATE + "admin"}
    granted = {(name, r, v) for name, d in roles.items() for rule in d["rules"] for r in rule["resources"]
               for v in rule["verbs"]}
    # Viewers read; editors manage identities (patch is how a renewal is asked for). Nobody gets Secrets or the
    # cluster-admin's policies to write from these.
    assert ("rel-mtls-operator-view", "mtlsidentities", "list") in granted
    assert ("rel-mtls-operator-edit", "mtlsidentities", "patch") in granted
    assert not {r for _, r, v in granted if v not in ("get", "list", "watch")} - {"mtlsidentities"}
    assert not any(r == "secrets" for _, r, _ in granted)
    bound = {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")}
    assert not bound & set(roles)
    assert not [d for d in by_kind(render(helm, "userRoles.aggregate=false"), "ClusterRole") if _users_role(d)]
