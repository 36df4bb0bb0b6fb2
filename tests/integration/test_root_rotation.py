"""Root rotation without downtime, against the real control plane.

A server and a client keep making mutual-TLS connections, each reading its identity from a folder kept in step with
its Secret the way the kubelet does it (a new directory, then an atomic `..data` symlink swap), while leaves rotate
several times and the root rotates once: not one handshake may fail. And a rotation interrupted by killing the operator
in each phase resumes and completes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
from pathlib import Path

import pytest

from mtls_operator import pki, rotation, workload
from tests import tlskit
from tests.kit import (
    OPERATOR_NAMESPACE,
    Api,
    OperatorProcess,
    secret_files,
    swap_volume,
    swapped_operator,
    wait_for,
    write_identity_dir,
)

pytestmark = pytest.mark.local_operator
SHORT = {"duration": "24s", "renewBefore": "16s"}  # leaves renew about every 8 s


def rotating_operator(operator: OperatorProcess, ca_secret: str, namespace: str, *extra: str):
    """An operator with its own managed root, serving only the test's namespace (other tests' identities stay out)."""
    return swapped_operator(operator, "--namespace", namespace, "--ca-secret-name", ca_secret, "--ca-propagation",
                            "3s", "--ca-grace", "3s", "--lease-duration", "4s", "--lease-name", f"lease-{ca_secret}",
                            *extra)


class Kubelet:
    """Keeps a folder in step with a Secret, promptly, by atomic symlink swaps."""

    def __init__(self, api: Api, namespace: str, secret: str, folder: Path) -> None:
        self.api, self.namespace, self.secret, self.folder = api, namespace, secret, folder
        self.version = ""
        self.sync()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sync(self) -> None:
        obj = self.api.secret(self.namespace, self.secret)
        if obj is not None and obj.metadata.resource_version != self.version:
            swap_volume(self.folder, secret_files(obj))
            self.version = obj.metadata.resource_version

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):
                self.sync()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# How long one exchange may take before it counts as failed. What the traffic tests is trust — a handshake refused
# or broken by a certificate or bundle in the wrong state — not speed: on two cores shared with the API server, the
# operator reissuing every leaf and the rest of the suite, a handshake was once held past 5 s and failed the test.
SLOW_MACHINE = 60


class Traffic:
    """A server (one listening context, following its folder) and a client connecting in a loop."""

    def __init__(self, server_dir: Path, client_dir: Path, hostname: str) -> None:
        self.server = workload.reloading_server(server_dir)
        self.client = workload.reloading_client(client_dir)
        self.hostname = hostname
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls_listener = self.server.context().wrap_socket(self.listener, server_side=True)
        self.ok = 0
        self.failures: list[str] = []
        self.serials: set[str] = set()
        self._stop = threading.Event()  # the client starts no new exchange
        self._closing = threading.Event()  # the listener is being shut: accept() failing now is expected
        self._server = threading.Thread(target=self._serve, daemon=True)
        self._server.start()
        self._client = threading.Thread(target=self._call, daemon=True)
        self._client.start()

    def _serve(self) -> None:
        # Serves until stop() shuts the listener, not until the client's stop flag: the client may have begun one last
        # exchange just before the flag was set, and a server that quit at the flag left that handshake to time out.
        while True:
            try:
                conn, _ = self.tls_listener.accept()
            except OSError as e:
                if self._closing.is_set():
                    return
                self.failures.append(f"server: {e}")
                continue
            with conn:
                try:
                    conn.settimeout(SLOW_MACHINE)  # a client that vanished mid-exchange must not hold the server
                    conn.recv(8)
                    conn.sendall((workload.peer_spiffe_id(conn) or "anonymous").encode())
                except OSError as e:
                    self.failures.append(f"server: exchange: {type(e).__name__}: {e}")

    def _call(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=SLOW_MACHINE) as raw, \
                        self.client.context().wrap_socket(raw, server_hostname=self.hostname) as tls:
                    self.serials.add(tlskit.served_serial(tls))
                    tls.sendall(b"hi")
                    if not tls.recv(256).startswith(b"spiffe://"):
                        raise OSError("the server did not see the client's identity")
                self.ok += 1
            except OSError as e:  # ssl.SSLError is an OSError
                self.failures.append(f"client: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self._stop.set()
        self._client.join(SLOW_MACHINE + 10)  # its last exchange ends while the server still accepts
        self._closing.set()
        with contextlib.suppress(OSError):  # Linux wakes the accept(); elsewhere the join below says it did not
            self.tls_listener.shutdown(socket.SHUT_RDWR)
        self._server.join(SLOW_MACHINE + 10)
        self.tls_listener.close()
        for side, thread in (("client", self._client), ("server", self._server)):
            if thread.is_alive():
                self.failures.append(f"{side}: still running {SLOW_MACHINE + 10} s after the stop")


def _phase(api: Api, name: str) -> str:
    secret = api.secret(OPERATOR_NAMESPACE, name)
    return ((secret.metadata.annotations or {}).get(rotation.ANN_PHASE, "")) if secret else "?"


def _request_rotation(api: Api, name: str, key: str = rotation.ANN_REQUEST) -> None:
    api.core.patch_namespaced_secret(name, OPERATOR_NAMESPACE, {"metadata": {"annotations": {
        key: dt.datetime.now(dt.UTC).isoformat()}}})


def _authority(api: Api, secret: str) -> dict | None:
    try:
        return api.custom.get_cluster_custom_object("mtls-operator.io", "v1alpha1", "mtlsauthorities",
                                                    f"{OPERATOR_NAMESPACE}.{secret}")
    except Exception:
        return None


def _condition(obj: dict, kind: str) -> str:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), "")


def _roots(api: Api, name: str) -> list:
    return pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, name))["ca.crt"])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["root", pytest.param("intermediate", marks=pytest.mark.fault_timing)])
def test_rotation_of_leaves_and_root_without_downtime(api: Api, operator: OperatorProcess, ns: str,
                                                      tmp_path: Path, mode: str) -> None:
    ca = f"rot-{mode}-ca"
    request = rotation.ANN_REQUEST if mode == "root" else rotation.ANN_ROOT_REQUEST
    # A longer grace keeps the rotation visible long enough for the MtlsAuthority check below, also under load.
    with rotating_operator(operator, ca, ns, "--ca-mode", mode, "--ca-grace", "10s"):
        wait_for("the managed CA", lambda: api.secret(OPERATOR_NAMESPACE, ca))
        old_root = _roots(api, ca)[0]
        api.create_identity(ns, "svc", {"usages": ["server"], **SHORT})
        api.create_identity(ns, "cli", {"usages": ["client"], **SHORT})
        api.wait_ready(ns, "svc")
        api.wait_ready(ns, "cli")
        kubelets = [Kubelet(api, ns, "svc-mtls", tmp_path / "svc"), Kubelet(api, ns, "cli-mtls", tmp_path / "cli")]
        traffic = Traffic(tmp_path / "svc", tmp_path / "cli", f"svc.{ns}.svc")
        try:
            wait_for("a leaf rotation under traffic", lambda: api.identity(ns, "svc")["status"]["revision"] >= 2,
                     timeout=30)
            _request_rotation(api, ca, request)
            wait_for("the rotation to start", lambda: _phase(api, ca) != "", timeout=20)
            seen = wait_for("the cluster-level MtlsAuthority to show the rotation",
                            lambda: (a := _authority(api, ca)) and _condition(a, "Rotating") == "True" and a)
            assert seen["status"]["trustAnchorCount"] == 2  # old and new, side by side
            wait_for("the rotation to finish", lambda: _phase(api, ca) == "", timeout=90)
            new_root = _roots(api, ca)
            assert len(new_root) == 1 and new_root[0] != old_root
            for name in ("svc", "cli"):
                # Dropping the old root reaches each Secret through its next reconcile: wait for it.
                files = wait_for(f"{name}'s bundle to hold the new root only", lambda n=name: (
                    f := secret_files(api.secret(ns, f"{n}-mtls"))) and pki.load_chain(f["ca.crt"]) == new_root and f)
                chain = pki.load_chain(files["tls.crt"])  # leaf (and the intermediate): it must end at the new root
                assert pki.issued_by(chain[-1], new_root[0]), name
            wait_for("the namespace's trust bundle to hold the new root only", lambda: pki.load_chain(
                api.core.read_namespaced_config_map("mtls-trust-bundle", ns).data["ca.crt"].encode()) == new_root)
            done = wait_for("the MtlsAuthority to settle", lambda: (a := _authority(api, ca))
                            and _condition(a, "Rotating") == "False" and a["status"]["trustAnchorCount"] == 1 and a)
            assert _condition(done, "Ready") == "True" and done["status"]["rotationPhase"] == "Stable"
            assert done["status"]["trustAnchors"][0]["fingerprint"] == pki.fingerprint(new_root[0])
            revision = api.identity(ns, "svc")["status"]["revision"]
            wait_for("two more leaf rotations after the root moved",
                     lambda: api.identity(ns, "svc")["status"]["revision"] >= revision + 2, timeout=40)
            current = pki.serial_hex(pki.load_chain(secret_files(api.secret(ns, "svc-mtls"))["tls.crt"])[0])
            wait_for("the client to meet the latest server certificate", lambda: current in traffic.serials)
        finally:
            traffic.stop()
            for k in kubelets:
                k.stop()
    print(f"{mode}: {traffic.ok} mutual-TLS connections, {len(traffic.failures)} failed, "
          f"{len(traffic.serials)} server certificates seen")
    assert not traffic.failures, traffic.failures[:5]
    assert traffic.ok >= 1000, traffic.ok
    assert len(traffic.serials) >= 4  # the server's certificate changed under the same listening socket


@pytest.mark.fault_timing
@pytest.mark.timeout(240)
@pytest.mark.parametrize("phase", ["Propagating", "Reissuing", "Retiring"])
def test_rotation_killed_in_each_phase_resumes_and_completes(api: Api, operator: OperatorProcess, ns: str,
                                                             phase: str) -> None:
    secret = f"kill-{phase.lower()}-ca"
    # Long enough phases to be caught in, short enough for a test.
    # One leaf reissued every 2 s keeps Reissuing observable too.
    with rotating_operator(operator, secret, ns, "--ca-propagation", "6s", "--ca-grace", "6s",
                           "--reissue-rate", "0.5") as op:
        wait_for("the managed root", lambda: api.secret(OPERATOR_NAMESPACE, secret))
        old_root = _roots(api, secret)[0]
        for name in ("a", "b"):
            api.create_identity(ns, name)
        for name in ("a", "b"):
            api.wait_ready(ns, name)
        _request_rotation(api, secret)
        wait_for(f"phase {phase}", lambda: _phase(api, secret) == phase, timeout=60, interval=0.05)
        op.kill()
        op.start()  # waits out the dead leader's lease, then resumes from the phase recorded in the Secret
        wait_for("the rotation to complete", lambda: _phase(api, secret) == "", timeout=90)
        roots = _roots(api, secret)
        assert len(roots) == 1 and roots[0] != old_root
        for name in ("a", "b"):
            api.wait_ready(ns, name)
            files = wait_for(f"{name}'s bundle to hold the new root only", lambda n=name: (
                f := secret_files(api.secret(ns, f"{n}-mtls"))) and pki.load_chain(f["ca.crt"]) == roots and f)
            assert pki.issued_by(pki.load_chain(files["tls.crt"])[0], roots[0]), name


@pytest.mark.timeout(180)
def test_operator_made_intermediate_issues_and_renews_without_changing_trust(api: Api, operator: OperatorProcess,
                                                                             ns: str, tmp_path: Path) -> None:
    secret = "inter-ca"
    with rotating_operator(operator, secret, ns, "--ca-mode", "intermediate"):
        wait_for("the issuing intermediate", lambda: api.secret(OPERATOR_NAMESPACE, secret))
        root = pki.load_chain(secret_files(api.secret(OPERATOR_NAMESPACE, f"{secret}-root"))["tls.crt"])[0]
        api.create_identity(ns, "srv", {"usages": ["server"]})
        api.create_identity(ns, "cli", {"usages": ["client"]})
        for name in ("srv", "cli"):
            api.wait_ready(ns, name)
        files = secret_files(api.secret(ns, "srv-mtls"))
        chain = pki.load_chain(files["tls.crt"])
        assert len(chain) == 2 and pki.issued_by(chain[1], root) and pki.load_chain(files["ca.crt"]) == [root]
        old_client = write_identity_dir(api.secret(ns, "cli-mtls"), tmp_path / "cli-old")
        first_intermediate = chain[1]

        _request_rotation(api, secret)  # a new intermediate, same root
        wait_for("leaves from the new intermediate", lambda: all(
            pki.load_chain(secret_files(api.secret(ns, f"{n}-mtls"))["tls.crt"])[1] != first_intermediate
            and api.ready(ns, n) for n in ("srv", "cli")), timeout=60)
        files = secret_files(api.secret(ns, "srv-mtls"))
        assert pki.load_chain(files["ca.crt"]) == [root]  # nothing peers trust changed
        new_server = write_identity_dir(api.secret(ns, "srv-mtls"), tmp_path / "srv-new")
        # A client still on a leaf from the old intermediate talks to a server on the new one, and the reverse.
        s, c = tlskit.exchange(workload.server_context(new_server), workload.client_context(old_client),
                               f"srv.{ns}.svc")
        assert s.ok and c.ok, (s, c)
        new_client = write_identity_dir(api.secret(ns, "cli-mtls"), tmp_path / "cli-new")
        s, c = tlskit.exchange(workload.server_context(new_server), workload.client_context(new_client),
                               f"srv.{ns}.svc")
        assert s.ok and c.ok, (s, c)
