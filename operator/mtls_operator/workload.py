"""The workload side: TLS contexts built from a mounted identity folder (tls.crt, tls.key, ca.crt), for Python servers
and clients that want mutual TLS with the identities this operator issues.

Importable without kopf or the Kubernetes client: a workload image needs only the standard library.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(folder: str | Path, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server that presents its identity and verifies clients against the bundle.

    require_client_cert=False is "optional mTLS": clients without a certificate are let in (their peer identity is
    None), clients with one must still present a certificate from a trusted CA.
    """
    folder = Path(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    ctx.load_verify_locations(folder / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(folder: str | Path, present_identity: bool = True) -> ssl.SSLContext:
    """A client that verifies the server (chain and hostname) and, unless told not to, presents its own identity."""
    folder = Path(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(folder / "ca.crt")
    if present_identity:
        ctx.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    return ctx


def peer_spiffe_id(sock: ssl.SSLSocket) -> str | None:
    """The SPIFFE ID in the verified peer certificate, or None for an anonymous (optional-mTLS) peer."""
    cert = sock.getpeercert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None
