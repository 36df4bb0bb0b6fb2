"""`make demo`: the whole product on a real local control plane, start to finish, in about half a minute.

Starts etcd + kube-apiserver + kube-controller-manager, installs the CRD, runs the operator, applies examples/demo.yaml
(a server and a client identity) and shows them Ready with their certificates. Then the story the project was born
from, with the issued Secrets: a backend (greeter) turns on *optional* mTLS for one new client (caller) while a legacy
client without a certificate keeps working, tightens to *strict* (the legacy client is refused, the new one still
served), and both keep working across a forced renewal of their certificates. Tears everything down at the end.

Every promised outcome is checked: the demo exits non-zero, saying which, when one does not happen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "hack")]

from cryptography import x509  # noqa: E402

import cluster  # noqa: E402
from mtls_operator import pki, workload  # noqa: E402
from tests.kit import (  # noqa: E402
    OPERATOR_NAMESPACE,
    Api,
    Kubectl,
    OperatorProcess,
    secret_files,
    swap_volume,
    wait_for,
)

NS = "demo"
SERVER_NAME = f"greeter.{NS}.svc"  # the DNS name the clients dial and check in greeter's certificate
IDENTITIES = ("greeter", "caller")
SSL_SOURCE = re.compile(r" \(_ssl\.c:\d+\)$")


class DemoFailed(Exception):
    """An outcome the story promises did not happen: `make demo` says which and exits non-zero."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailed(what)


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(result: subprocess.CompletedProcess) -> None:
    print(result.stdout.rstrip(), flush=True)


def certificate_summary(folder: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(folder / "tls.crt"), "-noout", "-serial", "-issuer",
                          "-startdate", "-enddate", "-ext", "subjectAltName,extendedKeyUsage"],
                         capture_output=True, text=True, check=True).stdout
    return "\n".join("    " + line for line in out.strip().splitlines())


def serial_of_pem(pem: bytes) -> str:
    """The leaf's serial spelled as the operator's status spells it (pki.serial_hex), so the two compare."""
    return pki.serial_hex(pki.load_chain(pem)[0])


def peer_serial(tls: ssl.SSLSocket) -> str:
    """The serial of the certificate the other side presented, or "" when it presented none (optional mTLS)."""
    der = tls.getpeercert(binary_form=True)
    return pki.serial_hex(x509.load_der_x509_certificate(der)) if der else ""


def tls_error(error: OSError) -> str:
    """What a peer would log, without the `(_ssl.c:NNNN)` source location that says nothing to a reader."""
    return f"{type(error).__name__}: {SSL_SOURCE.sub('', str(error))}"


# ---- the story: one backend, a legacy client and a new client --------------------------------------------------

@dataclasses.dataclass
class Seen:
    """What greeter saw of one connection: the client's SPIFFE ID ("anonymous" without a certificate) and serial, or
    why the handshake failed."""

    peer: str = ""
    serial: str = ""
    error: str = ""


@dataclasses.dataclass
class Answer:
    """What a client saw of one connection: greeter's identity and greeting, or the TLS error it got instead."""

    greeting: str = ""
    server_id: str = ""
    server_serial: str = ""
    version: str = ""
    error: str = ""


class Greeter:
    """The backend: one listening socket given one context when it starts, as a server framework holds it. Renewed
    certificates still reach new handshakes through the reloading context's SNI switch, so the same process keeps
    serving across a renewal. Each connection is answered "hello <client SPIFFE ID>" (or "hello anonymous") at once:
    the client sends nothing, so a refusal reaches it as the server's alert, not a reset racing its own write."""

    def __init__(self, folder: Path, require_client_cert: bool, port: int = 0) -> None:
        self.reloader = workload.reloading_server(folder, require_client_cert=require_client_cert)
        self.context = self.reloader.context()
        self.listener = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: a restart may take the same port
        self.port: int = self.listener.getsockname()[1]
        self.seen: list[Seen] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="greeter", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._closing.is_set():
                conn.close()
                return
            self._greet(conn)

    def _greet(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                seen = Seen(peer=workload.peer_spiffe_id(tls) or "anonymous", serial=peer_serial(tls))
                tls.sendall(f"hello {seen.peer}".encode())
        except OSError as e:  # ssl.SSLError included: a refused handshake
            seen = Seen(error=tls_error(e))
        self.seen.append(seen)

    def seen_after(self, count: int) -> Seen:
        """What greeter logged of the connection after the first `count`: a refusal is logged after the client has its
        alert, so poll for it rather than read it at once."""
        return wait_for("greeter to log the connection", lambda: len(self.seen) > count and self.seen[count], 10)

    def close(self) -> None:
        """Stops the accept loop (woken by one last connection) and closes the listener."""
        self._closing.set()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        self._thread.join(10)
        self.listener.close()


def call(client: workload.Reloading, port: int) -> Answer:
    """One connection as a client makes it: verify greeter (chain and DNS name), read its greeting. With TLS 1.3 a
    server that refuses the client's (missing) certificate does so after the client's side of the handshake is done:
    the refusal surfaces at the first read, so the client always reads before it counts as served."""
    answer = Answer()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client.context().wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            answer.server_id = workload.peer_spiffe_id(tls) or ""
            answer.server_serial, answer.version = peer_serial(tls), tls.version() or ""
            answer.greeting = tls.recv(256).decode()
            if not answer.greeting:
                answer.error = "connection closed without a greeting"
    except OSError as e:
        answer.error = tls_error(e)
    return answer


class Story:
    """Optional mTLS, then strict, across a renewal. The clients are made once and keep their reloading contexts, as
    long-running processes would: the new client (caller) with its identity, the legacy client with only the
    namespace's trust bundle (it verifies greeter, and has no certificate to present)."""

    def __init__(self, greeter_dir: Path, caller_dir: Path, legacy_dir: Path, caller_id: str, greeter_id: str) -> None:
        self.greeter_dir, self.caller_id, self.greeter_id = greeter_dir, caller_id, greeter_id
        self.caller = workload.reloading_client(caller_dir)
        self.legacy = workload.reloading_client(legacy_dir, present_identity=False)
        self.greeter: Greeter | None = None

    def optional(self) -> None:
        """Step 1: greeter asks for a certificate but lets in a client without one."""
        self.greeter = Greeter(self.greeter_dir, require_client_cert=False)
        print(f"    greeter on 127.0.0.1:{self.greeter.port}: "
              "workload.reloading_server(greeter/, require_client_cert=False)")
        self._served("optional", "legacy", self.legacy, "anonymous")
        self._served("optional", "caller", self.caller, self.caller_id)

    def strict(self) -> None:
        """Step 2: greeter restarts on the same port with the flag flipped, as a redeploy with new config would.
        (Not a reloading switch: each handshake keeps the verify mode of the context the listener was given, and the
        SNI switch to a fresher context swaps certificate and trust bundle only; a restart is the honest way.)"""
        assert self.greeter is not None, "optional() first"
        port = self.greeter.port
        self.greeter.close()
        self.greeter = Greeter(self.greeter_dir, require_client_cert=True, port=port)
        print(f"    greeter restarted on 127.0.0.1:{port}: "
              "workload.reloading_server(greeter/, require_client_cert=True)")
        self._refused("strict", "legacy", self.legacy)
        self._served("strict", "caller", self.caller, self.caller_id)

    def renewed(self, greeter_serial: str, caller_serial: str) -> None:
        """Step 3: the same strict greeter and the same caller context, after both certificates were renewed."""
        assert self.greeter is not None, "strict() first"
        answer, seen = self._served("strict, renewed", "caller", self.caller, self.caller_id)
        expect(answer.server_serial == greeter_serial,
               f"caller was served greeter's serial {answer.server_serial}, not the renewed {greeter_serial}")
        expect(seen.serial == caller_serial,
               f"greeter saw caller's serial {seen.serial}, not the renewed {caller_serial}")
        print(f"    greeter built {self.greeter.reloader.reloads} contexts on one listener; "
              f"caller built {self.caller.reloads}: both followed the kubelet-style swap")
        self._refused("strict, renewed", "legacy", self.legacy)

    def close(self) -> None:
        if self.greeter is not None:
            self.greeter.close()

    def _visit(self, client: workload.Reloading) -> tuple[Answer, Seen]:
        assert self.greeter is not None
        count = len(self.greeter.seen)
        answer = call(client, self.greeter.port)
        return answer, self.greeter.seen_after(count)

    def _served(self, mode: str, who: str, client: workload.Reloading, peer: str) -> tuple[Answer, Seen]:
        answer, seen = self._visit(client)
        label = f"[{mode}] {who}" + (", no certificate" if client is self.legacy else "")
        if answer.error:
            print(f"    {label:<40} -> REFUSED  {answer.error}\n        greeter logged: {seen.error or seen.peer}")
        else:
            print(f"    {label:<40} -> served   {answer.greeting!r}\n"
                  f"        greeter saw {seen.peer}" + (f", serial {seen.serial}" if seen.serial else "") + "\n"
                  f"        {who} saw {answer.server_id}, serial {answer.server_serial}, {answer.version}")
        expect(not answer.error and answer.greeting == f"hello {peer}" and seen.peer == peer,
               f"[{mode}] {who} should be served as {peer}; it got {answer.error or repr(answer.greeting)}")
        expect(answer.server_id == self.greeter_id,
               f"[{mode}] {who} verified greeter as {answer.server_id!r}, not {self.greeter_id}")
        return answer, seen

    def _refused(self, mode: str, who: str, client: workload.Reloading) -> None:
        answer, seen = self._visit(client)
        label = f"[{mode}] {who}, no certificate"
        if answer.error:
            print(f"    {label:<40} -> refused  {answer.error}\n        greeter logged: {seen.error}")
        else:
            print(f"    {label:<40} -> SERVED   {answer.greeting!r}")
        expect(bool(answer.error) and bool(seen.error),
               f"[{mode}] {who} should be refused; it got {answer.greeting!r}, greeter saw {seen.peer or seen.error}")


# ---- the cluster side ------------------------------------------------------------------------------------------

def identity_files(api: Api, name: str, serial: str) -> dict[str, bytes]:
    """The Secret's files once they hold the certificate with that serial (the status may be read first)."""
    def probe() -> dict[str, bytes] | None:
        secret = api.secret(NS, f"{name}-mtls")
        files = secret_files(secret) if secret else {}
        return files if "tls.crt" in files and serial_of_pem(files["tls.crt"]) == serial else None
    return wait_for(f"{name}'s Secret to hold serial {serial}", probe)


def trust_bundle(api: Api) -> bytes:
    """The namespace's `mtls-trust-bundle` ConfigMap: what a workload without an identity verifies peers with."""
    def probe() -> str | None:
        return (api.core.read_namespaced_config_map("mtls-trust-bundle", NS).data or {}).get("ca.crt")
    return wait_for("the mtls-trust-bundle ConfigMap", probe).encode()


def renew(api: Api, kubectl: Kubectl) -> dict[str, dict]:
    """Forces a renewal of both identities and returns their new status once each is Ready with a new serial."""
    old = {name: api.identity(NS, name)["status"]["serialNumber"] for name in IDENTITIES}
    show(kubectl("annotate", "mtlsidentity", "-n", NS, *IDENTITIES,
                 f"mtls-operator.io/renew={dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"))
    new = {}
    for name in IDENTITIES:
        new[name] = wait_for(f"the renewal of {name}", lambda n=name: (o := api.ready(NS, n)) and
                             o["status"]["serialNumber"] != old[n] and o)["status"]
        print(f"    {name}: serial {old[name]}\n          -> {new[name]['serialNumber']} "
              f"(revision {new[name]['revision']})")
    return new


def run(local: cluster.LocalCluster, work: Path) -> None:
    kubectl = Kubectl(cluster.kube_bin_dir() / "kubectl", local.kubeconfig)
    api = Api(local.kubeconfig)
    show(kubectl("version"))

    step("Installing the MtlsIdentity CRD")
    show(kubectl("apply", "-f", str(REPO / "crds")))
    kubectl("wait", "--for=condition=Established", "crd/mtlsidentities.mtls-operator.io")

    step("Running the operator (it bootstraps a root CA in its namespace)")
    api.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    operator = OperatorProcess(local.kubeconfig, work).start()
    story: Story | None = None
    try:
        wait_for("the root CA", lambda: api.secret(OPERATOR_NAMESPACE, "mtls-operator-ca"))
        show(kubectl("get", "secret", "-n", OPERATOR_NAMESPACE, "mtls-operator-ca"))

        step("Applying examples/demo.yaml: a server identity (greeter) and a client identity (caller)")
        show(kubectl("apply", "-f", str(REPO / "examples" / "demo.yaml")))
        status = {name: api.wait_ready(NS, name)["status"] for name in IDENTITIES}
        show(kubectl("get", "mtlsidentities", "-n", NS, "-o", "wide"))
        show(kubectl("get", "secrets", "-n", NS, "-l", "app.kubernetes.io/managed-by=mtls-operator"))

        # The folders a pod would see where the Secrets are mounted, updated the way the kubelet updates them.
        folders = {name: work / name for name in IDENTITIES}
        for name in IDENTITIES:
            swap_volume(folders[name], identity_files(api, name, status[name]["serialNumber"]))
            print(f"  {name}:\n{certificate_summary(folders[name])}")
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(folders["greeter"] / "ca.crt"),
                                 *(str(folders[name] / "tls.crt") for name in IDENTITIES)],
                                capture_output=True, text=True, check=True)
        print("  openssl verify:\n" + "\n".join("    " + x for x in verify.stdout.strip().splitlines()))
        swap_volume(work / "legacy", {"ca.crt": trust_bundle(api)})
        story = Story(folders["greeter"], folders["caller"], work / "legacy",
                      caller_id=status["caller"]["spiffeID"], greeter_id=status["greeter"]["spiffeID"])

        step("Optional mTLS: greeter lets the legacy client in without a certificate, and knows caller by its ID")
        story.optional()

        step("Strict mTLS: greeter now requires a client certificate")
        story.strict()

        step("Forcing a renewal of greeter and caller (annotation mtls-operator.io/renew); nothing restarts")
        new = renew(api, kubectl)
        show(kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.name=greeter"))

        step("Strict mTLS after the renewal: the kubelet swaps the new files in; greeter and caller follow them")
        for name in IDENTITIES:
            swap_volume(folders[name], identity_files(api, name, new[name]["serialNumber"]))
        story.renewed(new["greeter"]["serialNumber"], new["caller"]["serialNumber"])
        print("\n    Optional -> strict, across a renewal: the legacy client was served, then refused; "
              "caller was served throughout.")
    finally:
        step("Tearing down")
        if story is not None:
            story.close()
        operator.stop()


def main() -> None:
    began = time.monotonic()
    step("Building the control plane from pinned Go modules (cached after the first run)")
    cluster.ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="mtls-demo-"))
    step("Starting etcd, kube-apiserver and kube-controller-manager on 127.0.0.1")
    started = time.monotonic()
    try:
        with cluster.LocalCluster(kubeconfig=work / "kubeconfig") as local:
            print(f"    ready in {time.monotonic() - started:.1f}s at {local.server}")
            run(local, work)
    except DemoFailed as e:
        print(f"\nDEMO FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("    operator, controller-manager, API server and etcd stopped")
    print(f"\nDemo complete in {time.monotonic() - began:.0f}s.")


if __name__ == "__main__":
    main()
