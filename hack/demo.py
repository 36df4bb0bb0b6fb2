"""`make demo`: the whole product on a real local control plane, start to finish, in about half a minute.

Starts etcd + kube-apiserver + kube-controller-manager, installs the CRD, runs the operator, applies examples/demo.yaml
(a server and a client identity), shows them Ready with their certificates, makes a real mutual-TLS connection with the
issued Secrets, forces a renewal and connects again with the new certificate, then tears everything down.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack")]

import cluster  # noqa: E402
from mtls_operator import workload  # noqa: E402
from tests.kit import OPERATOR_NAMESPACE, Api, Kubectl, OperatorProcess, wait_for, write_identity_dir  # noqa: E402

NS = "demo"


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(result: subprocess.CompletedProcess) -> None:
    print(result.stdout.rstrip(), flush=True)


def certificate_summary(folder: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(folder / "tls.crt"), "-noout", "-serial", "-issuer",
                          "-startdate", "-enddate", "-ext", "subjectAltName,extendedKeyUsage"],
                         capture_output=True, text=True, check=True).stdout
    return "\n".join("    " + line for line in out.strip().splitlines())


def handshake(server: Path, client: Path) -> str:
    """The greeter serves one request on loopback; the caller connects with its identity and gets greeted by ID."""
    ctx = workload.server_context(server)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            peer = workload.peer_spiffe_id(tls) or "anonymous"
            seen.append(peer)
            tls.recv(64)
            tls.sendall(f"hello {peer}".encode())
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            workload.client_context(client).wrap_socket(raw, server_hostname=f"greeter.{NS}.svc") as tls:
        server_id, version = workload.peer_spiffe_id(tls), tls.version()
        tls.sendall(b"hi\n")
        answer = tls.recv(256).decode()
    thread.join(5)
    return (f"    caller verified the server as {server_id} ({version})\n"
            f"    greeter verified the client as {seen[0]}\n    greeter answered: {answer!r}")


def main() -> None:
    step("Building the control plane from pinned Go modules (cached after the first run)")
    cluster.ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="mtls-demo-"))
    step("Starting etcd, kube-apiserver and kube-controller-manager on 127.0.0.1")
    started = dt.datetime.now()
    with cluster.LocalCluster(kubeconfig=work / "kubeconfig") as local:
        print(f"    ready in {(dt.datetime.now() - started).total_seconds():.1f}s at {local.server}")
        kubectl = Kubectl(cluster.bin_dir() / "kubectl", local.kubeconfig)
        api = Api(local.kubeconfig)
        show(kubectl("version"))

        step("Installing the MtlsIdentity CRD")
        show(kubectl("apply", "-f", str(REPO / "crds")))
        kubectl("wait", "--for=condition=Established", "crd/mtlsidentities.mtls-operator.io")

        step("Running the operator (it bootstraps a root CA in its namespace)")
        api.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
        operator = OperatorProcess(local.kubeconfig, work).start()
        try:
            wait_for("the root CA", lambda: api.secret(OPERATOR_NAMESPACE, "mtls-operator-ca"))
            show(kubectl("get", "secret", "-n", OPERATOR_NAMESPACE, "mtls-operator-ca"))

            step("Applying examples/demo.yaml: a server identity (greeter) and a client identity (caller)")
            show(kubectl("apply", "-f", str(REPO / "examples" / "demo.yaml")))
            for name in ("greeter", "caller"):
                api.wait_ready(NS, name)
            show(kubectl("get", "mtlsidentities", "-n", NS, "-o", "wide"))
            show(kubectl("get", "secrets", "-n", NS, "-l", "app.kubernetes.io/managed-by=mtls-operator"))

            server = write_identity_dir(api.secret(NS, "greeter-mtls"), work / "greeter")
            client = write_identity_dir(api.secret(NS, "caller-mtls"), work / "caller")
            for name, folder in (("greeter", server), ("caller", client)):
                print(f"  {name}:\n{certificate_summary(folder)}")
            verify = subprocess.run(["openssl", "verify", "-CAfile", str(server / "ca.crt"), str(server / "tls.crt"),
                                     str(client / "tls.crt")], capture_output=True, text=True, check=True)
            print("  openssl verify:\n" + "\n".join("    " + x for x in verify.stdout.strip().splitlines()))

            step("Mutual TLS between the two, with the files from their Secrets")
            print(handshake(server, client))

            step("Forcing a renewal of greeter (annotation mtls-operator.io/renew)")
            old = api.identity(NS, "greeter")["status"]["serialNumber"]
            show(kubectl("annotate", "mtlsidentity", "-n", NS, "greeter",
                         f"mtls-operator.io/renew={dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"))
            new = wait_for("the renewal", lambda: (o := api.ready(NS, "greeter")) and
                           o["status"]["serialNumber"] != old and o)["status"]
            print(f"    serial {old}\n        -> {new['serialNumber']} (revision {new['revision']})")
            show(kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.name=greeter"))

            step("Mutual TLS again, with the renewed certificate")
            server = write_identity_dir(api.secret(NS, "greeter-mtls"), work / "greeter-renewed")
            print(handshake(server, client))
        finally:
            step("Tearing down")
            operator.stop()
    print("    operator, controller-manager, API server and etcd stopped")
    print("\nDemo complete.")


if __name__ == "__main__":
    main()
