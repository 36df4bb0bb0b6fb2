"""Pod-certificate signer benchmark (numbers, not pass/fail): N PodCertificateRequests created at once, as kubelets
would for N starting pods — time until every one is issued, and the operator's CPU per signature — against the API
server's floor measured in the same run: the same N requests created and answered by a plain client that signs
nothing (one create and one status write each, the writes the signer itself makes).

On a fresh local control plane (Kubernetes 1.37): the operator (defaults, every namespace allowed) runs alone.
  1. floor: N requests for another signer are created by 8 client threads, and each is answered (Denied) by the
     same threads: create → all answered;
  2. signer: N requests for our signer are created by 8 client threads; create → all Issued; the operator's CPU time
     over that window (user + system, /proc) divided by N.
The machine's load (`uptime`) is recorded before and after: API server, etcd, client and operator share two cores.

Usage: python bench/podcerts.py [--n 200] [--key ECDSAP256|RSA3072] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack")]

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

import cluster  # noqa: E402
from mtls_operator import podcert  # noqa: E402
from tests.kit import OPERATOR_NAMESPACE, Api, Kubectl, OperatorProcess, wait_for  # noqa: E402

GROUP, VERSION, PLURAL = "certificates.k8s.io", "v1", "podcertificaterequests"
THREADS = 8


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stubs(n: int, key_type: str) -> list[str]:
    """Made before any clock starts: on a node the kubelet makes the key, not the signer."""
    out = []
    for _ in range(n):
        key = (rsa.generate_private_key(65537, 3072) if key_type == "RSA3072"
               else ec.generate_private_key(ec.SECP256R1()))
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        out.append(base64.b64encode(csr.public_bytes(Encoding.DER)).decode())
    return out


def body(signer: str, stub: str, i: int) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PodCertificateRequest", "metadata": {"name": f"req-{i}"},
            "spec": {"signerName": signer, "podName": f"pod-{i}", "podUID": f"00000000-0000-4000-8000-{i:012d}",
                     "serviceAccountName": "web", "serviceAccountUID": "00000000-0000-4000-9000-000000000001",
                     "nodeName": "node-a", "nodeUID": "00000000-0000-4000-a000-000000000001",
                     "maxExpirationSeconds": 86400, "stubPKCS10Request": stub}}


def floor(api: Api, ns: str, stubs_: list[str]) -> float:
    """A client that answers each request itself, signing nothing: create, then one status write."""
    def one(i: int) -> None:
        created = api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                                             body("bench.example/floor", stubs_[i], i))
        status = podcert.denied_status(podcert.Deny("Bench", "floor"), dt.datetime.now(dt.UTC).replace(microsecond=0))
        api.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, created["metadata"]["name"],
            {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "status": status})

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(len(stubs_))))
    return time.monotonic() - start


def signed(api: Api, operator: OperatorProcess, ns: str, stubs_: list[str]) -> dict:
    n = len(stubs_)
    cpu_before = cpu_seconds(operator.proc.pid)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: api.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, body(podcert.DEFAULT_SIGNER, stubs_[i], i)), range(n)))
    created = time.monotonic() - start

    def issued() -> int:
        items = api.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        return sum(1 for r in items if any(c["type"] == "Issued" for c in r.get("status", {}).get("conditions", [])))

    wait_for(f"{n} pod certificates issued", lambda: issued() == n, timeout=600, interval=0.05)
    total = time.monotonic() - start
    cpu = cpu_seconds(operator.proc.pid) - cpu_before
    return {"created_s": round(created, 2), "all_issued_s": round(total, 2), "operator_cpu_s": round(cpu, 2),
            "cpu_ms_per_signature": round(1000 * cpu / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--key", default="ECDSAP256", choices=("ECDSAP256", "RSA3072"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cluster.ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="bench-podcerts-") as tmp:
        workdir = Path(tmp)
        with cluster.LocalCluster(kubeconfig=workdir / "kubeconfig") as local:
            Kubectl(cluster.bin_dir() / "kubectl", local.kubeconfig)("apply", "-f", str(REPO / "crds"))
            api = Api(local.kubeconfig)
            for ns in (OPERATOR_NAMESPACE, "floor", "signed"):
                api.core.create_namespace({"metadata": {"name": ns}})
            operator = OperatorProcess(local.kubeconfig, workdir, ("--pod-cert-namespace-selector=",
                                                                    "--no-leader-election")).start()
            try:
                wait_for("the signer serving", lambda: "mtls_operator_pod_signer_serving 1.0" in operator.metrics(),
                         timeout=60)
                floor_stubs, signer_stubs = stubs(args.n, args.key), stubs(args.n, args.key)
                result = {"n": args.n, "key": args.key, "kubernetes": cluster.kube_minor(), "load_before": uptime()}
                result["floor_s"] = round(floor(api, "floor", floor_stubs), 2)
                result.update(signed(api, operator, "signed", signer_stubs))
                result["ratio_to_floor"] = round(result["all_issued_s"] / result["floor_s"], 2)
                result["load_after"] = uptime()
            finally:
                operator.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
