"""The workload helper: real handshakes with contexts that follow a folder the way the kubelet swaps it."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import types
from pathlib import Path

from mtls_operator import pki, workload
from tests import tlskit
from tests.kit import swap_volume

NOW = dt.datetime.now(dt.UTC)


def _root(name: str):
    key = pki.generate_key("ECDSA", 256)
    return pki.self_signed_ca(key, name, "test", NOW, dt.timedelta(days=1)), key


def _identity(ca, spiffe: str, server: bool, trusted: list) -> dict[str, bytes]:
    cert, ca_key = ca
    key = pki.generate_key("ECDSA", 256)
    leaf = pki.issue_leaf(pki.LeafRequest(spiffe, ("srv.ns.svc",) if server else (), (), server, not server,
                                          dt.timedelta(hours=1)), key.public_key(), cert, ca_key, NOW,
                          dt.timedelta(minutes=5))
    return {"tls.crt": pki.to_pem(leaf), "tls.key": pki.key_to_pem(key), "ca.crt": pki.to_pem(*trusted)}


class Server:
    """A listener given one context at start, as a framework would hold it, answering each client with the serial of
    the certificate it served."""

    def __init__(self, reloader: workload.Reloading) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls = reloader.context().wrap_socket(self.listener, server_side=True)
        self.errors: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.tls.accept()
            except OSError as e:
                self.errors.append(str(e))
                if self.listener.fileno() < 0:
                    return
                continue
            with conn:
                conn.recv(16)
                conn.sendall((workload.peer_spiffe_id(conn) or "anonymous").encode())


def _call(client: workload.Reloading | types.SimpleNamespace, port: int) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            client.context().wrap_socket(raw, server_hostname="srv.ns.svc") as tls:
        served = tlskit.served_serial(tls)
        tls.sendall(b"hi")
        return served, tls.recv(256).decode()


def test_server_and_client_follow_kubelet_swaps_without_new_listeners(tmp_path: Path) -> None:
    ca = _root("root A")
    srv_dir, cli_dir = tmp_path / "srv", tmp_path / "cli"
    first = _identity(ca, "spiffe://td/ns/ns/sa/srv", True, [ca[0]])
    swap_volume(srv_dir, first)
    swap_volume(cli_dir, _identity(ca, "spiffe://td/ns/ns/sa/cli", False, [ca[0]]))
    server_reloader = workload.reloading_server(srv_dir)
    server = Server(server_reloader)
    client = workload.reloading_client(cli_dir)

    served, answer = _call(client, server.port)
    assert served == pki.serial_hex(pki.load_chain(first["tls.crt"])[0])
    assert answer == "spiffe://td/ns/ns/sa/cli"

    # A renewal: the kubelet swaps the server's files; the same listening socket now serves the new certificate.
    second = _identity(ca, "spiffe://td/ns/ns/sa/srv", True, [ca[0]])
    swap_volume(srv_dir, second)
    served, _ = _call(client, server.port)
    assert served == pki.serial_hex(pki.load_chain(second["tls.crt"])[0])
    assert server_reloader.reloads == 2

    # A root rotation: both trust both roots first, then the server moves to root B; then the client does.
    ca_b = _root("root B")
    swap_volume(cli_dir, {**_identity(ca, "spiffe://td/ns/ns/sa/cli", False, [ca[0], ca_b[0]])})
    swap_volume(srv_dir, _identity(ca_b, "spiffe://td/ns/ns/sa/srv", True, [ca[0], ca_b[0]]))
    assert _call(client, server.port)[1] == "spiffe://td/ns/ns/sa/cli"
    swap_volume(cli_dir, _identity(ca_b, "spiffe://td/ns/ns/sa/cli", False, [ca[0], ca_b[0]]))
    assert _call(client, server.port)[1] == "spiffe://td/ns/ns/sa/cli"
    assert not server.errors


def test_a_broken_swap_keeps_the_last_good_context(tmp_path: Path) -> None:
    ca = _root("root")
    folder = tmp_path / "id"
    swap_volume(folder, _identity(ca, "spiffe://td/ns/ns/sa/x", False, [ca[0]]))
    client = workload.reloading_client(folder)
    good = client.context()
    swap_volume(folder, {"tls.crt": b"garbage", "tls.key": b"garbage", "ca.crt": b"garbage"})
    assert client.context() is good
    swap_volume(folder, _identity(ca, "spiffe://td/ns/ns/sa/x", False, [ca[0]]))
    assert client.context() is not good


def test_a_context_is_built_from_one_swap_even_when_the_kubelet_swaps_mid_read(tmp_path: Path, monkeypatch) -> None:
    """The kubelet swaps `..data` between the client's read of ca.crt and its read of tls.crt and tls.key (a renewal
    during a root rotation: new root, new leaf). Read through the folder's links, the context would hold the old
    bundle with the new leaf (or a key that does not match its certificate). Read from one swap's directory, whose
    files the kubelet (like swap_volume) removes right after the swap, the read fails there and is made again from the
    new directory: the context holds the new set whole, and does mutual TLS with a server of the new root."""
    old_ca, new_ca = _root("root A"), _root("root B")
    folder = tmp_path / "cli"
    swap_volume(folder, _identity(old_ca, "spiffe://td/ns/ns/sa/cli", False, [old_ca[0]]))
    new = _identity(new_ca, "spiffe://td/ns/ns/sa/cli", False, [new_ca[0]])
    swaps: list[int] = []

    class SwappedAfterTheBundle(ssl.SSLContext):
        def load_verify_locations(self, *args, **kwargs) -> None:
            super().load_verify_locations(*args, **kwargs)
            if not swaps:
                swaps.append(1)
                swap_volume(folder, new)

    swapping_ssl = types.ModuleType("ssl")
    swapping_ssl.__dict__.update(vars(ssl))
    swapping_ssl.SSLContext = SwappedAfterTheBundle
    monkeypatch.setattr(workload, "ssl", swapping_ssl)
    client = workload.client_context(folder)
    monkeypatch.undo()
    assert swaps

    srv_dir = tmp_path / "srv"
    swap_volume(srv_dir, _identity(new_ca, "spiffe://td/ns/ns/sa/srv", True, [new_ca[0]]))
    server = Server(workload.reloading_server(srv_dir))
    assert _call(types.SimpleNamespace(context=lambda: client), server.port)[1] == "spiffe://td/ns/ns/sa/cli"
    assert not server.errors
