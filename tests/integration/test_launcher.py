"""The control-plane launcher itself: `up`/`down` from the shell leave nothing behind, and so does a stopped cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cluster
from tests.kit import REPO


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def own_binaries() -> None:
    if os.environ.get("MTLS_KUBECONFIG"):
        pytest.skip("runs the local control plane's binaries")


def test_stop_leaves_no_process_and_no_folder(own_binaries) -> None:
    local = cluster.LocalCluster().start()
    pids = [p.pid for p in local.procs.values()]
    assert all(_alive(p) for p in pids)
    local.stop()
    local.cleanup()
    assert not any(_alive(p) for p in pids)
    assert not local.workdir.exists()


def test_cluster_up_and_down_from_the_shell(own_binaries, tmp_path: Path) -> None:
    env = {**os.environ, "MTLS_CLUSTER_STATE": str(tmp_path / "state")}
    kubeconfig = tmp_path / "state" / "kubeconfig"
    script = str(REPO / "hack" / "cluster.py")
    up = subprocess.run([sys.executable, script, "up", "--kubeconfig", str(kubeconfig)], env=env,
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "control plane ready" in up.stdout
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    try:
        kubectl = subprocess.run([str(cluster.kube_bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "ns",
                                  "default", "-o", "name"], capture_output=True, text=True, timeout=30)
        assert kubectl.stdout.strip() == "namespace/default", kubectl.stderr
        again = subprocess.run([sys.executable, script, "up"], env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        down = subprocess.run([sys.executable, script, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in state["pids"].values())
    assert not Path(state["workdir"]).exists() and not kubeconfig.exists()
