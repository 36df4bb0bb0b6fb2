"""Memory benchmark (numbers, and a verdict): what look-alike Secrets cost the operator.

A tenant may create Secrets carrying the operator's managed-by label and an ownerReference to its own identity. They
must cost the operator nothing: it trusts, caches and counts only Secrets it can prove it wrote (docs/security.md).

On a fresh local control plane, with one real identity in a tenant namespace:
  1. restart the operator and read its peak RSS (VmHWM) once it has settled: the baseline restart;
  2. the tenant creates --count look-alike Secrets of --size bytes each (labelled, owned by its identity);
     the operator's peak and current RSS while they arrive on the watch;
  3. restart the operator with the look-alikes in place: the peak of its initial list (VmHWM).
The verdict is whether every figure stays within --budget MiB of the baseline.

Usage: python bench/lookalikes.py [--count 200] [--size 1000000] [--budget 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack")]

import cluster  # noqa: E402
from tests.kit import OPERATOR_NAMESPACE, Api, Kubectl, OperatorProcess, wait_for  # noqa: E402


def memory(pid: int) -> tuple[float, float]:
    """(peak RSS, current RSS) of a process, in MiB, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> float:
        match = re.search(rf"{name}:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else 0.0
    return field("VmHWM"), field("VmRSS")


def settle(pid: int, quiet: float = 3.0, timeout: float = 120.0) -> tuple[float, float]:
    """Waits until the RSS has not grown for `quiet` seconds (the operator has absorbed what it was sent), then reads
    peak and current RSS. Polling, not a fixed sleep: a loaded machine only takes longer."""
    deadline = time.monotonic() + timeout
    last, since = memory(pid)[1], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = memory(pid)[1]
        if now > last + 0.5:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return memory(pid)


def lookalike(namespace: str, name: str, owner: dict, size: int) -> dict:
    """A tenant's own Secret dressed as the operator's: the label, a controller ownerReference to the tenant's
    identity, a kubernetes.io/tls type, and `size` bytes of data."""
    filler = os.urandom(size // 2).hex()[:size].encode()
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "mtls-operator"},
                     "ownerReferences": [{"apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity",
                                          "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                          "controller": True}]},
        "data": {"tls.crt": base64.b64encode(filler).decode(), "tls.key": "", "ca.crt": ""},
    }


def run(count: int, size: int, workdir: Path) -> dict:
    with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig") as local:
        kubectl = Kubectl(cluster.kube_bin_dir() / "kubectl", local.kubeconfig)
        kubectl("apply", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/mtlsidentities.mtls-operator.io")
        api = Api(local.kubeconfig)
        api.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
        log_dir = workdir / "logs"
        log_dir.mkdir()
        operator = OperatorProcess(local.kubeconfig, log_dir).start()
        try:
            tenant = api.namespace("tenant")
            owner = api.create_identity(tenant, "shop")
            api.wait_ready(tenant, "shop", timeout=60)

            operator.restart()
            baseline_peak, baseline_rss = settle(operator.proc.pid)

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda i: api.core.create_namespaced_secret(
                    tenant, lookalike(tenant, f"lookalike-{i}", owner, size)), range(count)))
            created_in = time.monotonic() - started
            watch_peak, watch_rss = settle(operator.proc.pid)
            api.wait_ready(tenant, "shop")

            operator.restart()
            restart_peak, restart_rss = settle(operator.proc.pid)
            wait_for("the identity still Ready", lambda: api.ready(tenant, "shop"))
        finally:
            operator.stop()
    return {"count": count, "size": size, "created_in_s": round(created_in, 1),
            "baseline_restart_peak_mib": round(baseline_peak, 1), "baseline_rss_mib": round(baseline_rss, 1),
            "while_created_peak_mib": round(watch_peak, 1), "while_created_rss_mib": round(watch_rss, 1),
            "restart_with_lookalikes_peak_mib": round(restart_peak, 1),
            "restart_with_lookalikes_rss_mib": round(restart_rss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=1_000_000, help="bytes of data per look-alike Secret")
    parser.add_argument("--budget", type=float, default=20.0, help="MiB allowed above the baseline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kube = cluster.kube_bin_dir()
    if not all(p.exists() for p in (cluster.bin_dir() / "etcd", kube / "kube-apiserver")):
        cluster.ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="mtls-lookalikes-") as tmp:
        result = run(args.count, args.size, Path(tmp))
    base = result["baseline_restart_peak_mib"]
    worst = max(result["while_created_peak_mib"], result["restart_with_lookalikes_peak_mib"])
    result["worst_over_baseline_mib"] = round(worst - base, 1)
    result["within_budget"] = worst - base <= args.budget
    for k, v in result.items():
        print(f"{k:36} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["within_budget"] else 1)


if __name__ == "__main__":
    main()
