"""Real TLS handshakes over loopback TCP between Python `ssl` peers holding identity files, for the tests. The
contexts come from mtls_operator.workload, the helper workloads use."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading

from cryptography import x509

from mtls_operator import pki


@dataclasses.dataclass
class Outcome:
    ok: bool
    error: str = ""
    peer_uris: tuple[str, ...] = ()
    data: bytes = b""


def served_serial(tls: ssl.SSLSocket) -> str:
    """The serial of the certificate a TLS peer presented, named the one way the tests name serials (pki.serial_hex:
    zero-padded to whole bytes). Comparing it with any other spelling fails whenever the hex starts with 0."""
    return pki.serial_hex(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)))


def _uris(cert: dict | None) -> tuple[str, ...]:
    return tuple(v for k, v in (cert or {}).get("subjectAltName", ()) if k == "URI")


def exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str,
             timeout: float = 10.0) -> tuple[Outcome, Outcome]:
    """One connection: the client sends a line, the server answers with the client's SPIFFE ID (or "anonymous").

    Returns what each side saw. With TLS 1.3 a rejected client certificate surfaces on the client only at its first
    read, so the client always reads the answer before reporting success.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(timeout)
    port = listener.getsockname()[1]
    server_result = Outcome(ok=False)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(timeout)
                uris = _uris(tls.getpeercert())
                tls.recv(64)
                tls.sendall((uris[0] if uris else "anonymous").encode())
                server_result.ok, server_result.peer_uris = True, uris
        except (OSError, ssl.SSLError) as e:
            server_result.error = f"{type(e).__name__}: {e}"
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_result = Outcome(ok=False)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            client_result.peer_uris = _uris(tls.getpeercert())
            tls.sendall(b"hello\n")
            data = tls.recv(256)
            client_result.ok, client_result.data = bool(data), data
            if not data:
                client_result.error = "connection closed without an answer"
    except (OSError, ssl.SSLError) as e:
        client_result.error = f"{type(e).__name__}: {e}"
    thread.join(timeout)
    return server_result, client_result
