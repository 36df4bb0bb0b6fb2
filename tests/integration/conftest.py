"""Fixtures over the real control plane: the built kubectl, the Python client, the CRD, and the operator process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cluster
from tests.kit import OPERATOR_NAMESPACE, REPO, Api, InClusterOperator, Kubectl, OperatorProcess, wait_for


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(cluster.kube_bin_dir() / "kubectl", kubeconfig)


@pytest.fixture(scope="session")
def api(kubeconfig: Path) -> Api:
    return Api(kubeconfig)


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl, api: Api) -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/mtlsidentities.mtls-operator.io")


@pytest.fixture(scope="session")
def operator_namespace(api: Api) -> str:
    import kubernetes

    try:
        api.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    except kubernetes.client.exceptions.ApiException as e:
        if e.status != 409:
            raise
    return OPERATOR_NAMESPACE


@pytest.fixture(scope="session")
def operator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-logs")


IN_CLUSTER = os.environ.get("MTLS_OPERATOR") == "in-cluster"


def _order(item: pytest.Item) -> int:
    """In kind: the Secret workloads first (their root rotation must end before any pod certificate is signed under
    that root, or its Retiring phase would wait for it; the pod-certificate pair starts the moment it has ended), then
    the pair's own tests, and the rest of the suite runs while the pair's certificate ages towards the kubelet's
    refresh. Last, anywhere: tests that leave the cluster
    changed for good (a root rotation held in Retiring)."""
    if "kind_finale" in item.keywords:
        return 3
    module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
    if IN_CLUSTER and module == "test_kind_workloads.py":
        return 0
    if IN_CLUSTER and module == "test_pod_certificates_in_kind.py":
        return 1
    return 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_order)
    if IN_CLUSTER:
        skip = pytest.mark.skip(reason="starts, stops or swaps the operator process; the operator runs in-cluster")
        for item in items:
            if "local_operator" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def operator(kubeconfig: Path, crd: None, operator_namespace: str, operator_logs: Path, api: Api, kubectl: Kubectl):
    """One operator for the session, all namespaces. Tests may restart it; it is running again when they end.
    With MTLS_OPERATOR=in-cluster (the kind path) it is the chart's Deployment instead."""
    if IN_CLUSTER:
        in_cluster = InClusterOperator(kubectl)
        wait_for("the in-cluster operator", in_cluster.healthy, timeout=120)
        yield in_cluster
        return
    proc = OperatorProcess(kubeconfig, operator_logs).start()
    wait_for("the root CA Secret", lambda: api.secret(operator_namespace, "mtls-operator-ca"))
    yield proc
    proc.stop()


@pytest.fixture
def ns(api: Api) -> str:
    return api.namespace()
