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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that leave the cluster changed for good (a root rotation held in Retiring) run after all others.
    items.sort(key=lambda item: "kind_finale" in item.keywords)
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
