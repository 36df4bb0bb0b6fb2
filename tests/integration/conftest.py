"""Fixtures over the real control plane: the built kubectl, the Python client, the CRD, and the operator process."""

from __future__ import annotations

from pathlib import Path

import pytest

import cluster
from tests.kit import OPERATOR_NAMESPACE, REPO, Api, Kubectl, OperatorProcess, wait_for


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(cluster.bin_dir() / "kubectl", kubeconfig)


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


@pytest.fixture(scope="session")
def operator(kubeconfig: Path, crd: None, operator_namespace: str, operator_logs: Path, api: Api):
    """One operator for the session, all namespaces. Tests may restart it; it is running again when they end."""
    proc = OperatorProcess(kubeconfig, operator_logs).start()
    wait_for("the root CA Secret", lambda: api.secret(operator_namespace, "mtls-operator-ca"))
    yield proc
    proc.stop()


@pytest.fixture
def ns(api: Api) -> str:
    return api.namespace()
