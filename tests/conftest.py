"""pytest wiring: unit tests need nothing; tests under tests/integration get the `integration` marker and a real control
plane (hack/cluster.py), or the cluster named by MTLS_KUBECONFIG (e.g. a kind cluster) when that is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory):
    """The local control plane, or None when MTLS_KUBECONFIG names another cluster."""
    if os.environ.get("MTLS_KUBECONFIG"):
        yield None
        return
    import cluster  # hack/cluster.py

    kube = cluster.kube_bin_dir()
    needed = (cluster.bin_dir() / "etcd", kube / "kube-apiserver", kube / "kube-controller-manager")
    if not all(p.exists() for p in needed):
        cluster.ensure_binaries()
    local = cluster.LocalCluster(kubeconfig=tmp_path_factory.mktemp("cluster") / "kubeconfig")
    with local:
        yield local


@pytest.fixture(scope="session")
def kubeconfig(control_plane) -> Path:
    return control_plane.kubeconfig if control_plane else Path(os.environ["MTLS_KUBECONFIG"])
