"""The workload side: TLS contexts built from a mounted identity folder (tls.crt, tls.key, ca.crt), for Python servers
and clients that want mutual TLS with the identities this operator issues.

Importable without kopf or the Kubernetes client: a workload image needs only the standard library. The reloading
variants follow the files as the kubelet swaps them after every renewal (and during a CA rotation, when ca.crt holds
both roots), so a long-running process never serves an expired certificate or distrusts a renewed peer.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path


def server_context(folder: str | Path, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server that presents its identity and verifies clients against the bundle.

    require_client_cert=False is "optional mTLS": clients without a certificate are let in (their peer identity is
    None), clients with one must still present a certificate from a trusted CA.
    """
    def build(files: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(files / "tls.crt", files / "tls.key")
        ctx.load_verify_locations(files / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    return _from_one_swap(Path(folder), build)


def client_context(folder: str | Path, present_identity: bool = True) -> ssl.SSLContext:
    """A client that verifies the server (chain and hostname) and, unless told not to, presents its own identity."""
    def build(files: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(files / "ca.crt")
        if present_identity:
            ctx.load_cert_chain(files / "tls.crt", files / "tls.key")
        return ctx

    return _from_one_swap(Path(folder), build)


def _data_dir(folder: Path) -> Path:
    """Where one swap's files are. Read through `tls.crt -> ..data/tls.crt`, a key and a certificate opened a moment
    apart can come from two swaps (a renewal's new certificate with the old key: OpenSSL's "key values mismatch"); the
    directory `..data` points to is written once and never changed, so reading all the files from it gives one swap's
    set. Outside a kubelet volume there is no `..data`, and the folder itself is read."""
    try:
        return folder / os.readlink(folder / "..data")
    except OSError:
        return folder


def _from_one_swap(folder: Path, build: Callable[[Path], ssl.SSLContext]) -> ssl.SSLContext:
    """build() over one swap's directory. The kubelet removes a swap's directory right after the next swap, so a read
    that fails while `..data` has moved on is tried again from the new one (a few times: swaps are minutes apart)."""
    for _ in range(3):
        files = _data_dir(folder)
        try:
            return build(files)
        except OSError:  # ssl.SSLError included
            if files == folder or _data_dir(folder) == files:
                raise
    return build(_data_dir(folder))


def peer_spiffe_id(sock: ssl.SSLSocket) -> str | None:
    """The SPIFFE ID in the verified peer certificate, or None for an anonymous (optional-mTLS) peer."""
    cert = sock.getpeercert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None


def _version(folder: Path) -> object:
    """What changes when the kubelet updates a Secret volume: it writes a new timestamped directory and swaps the
    `..data` symlink to it atomically. Outside a kubelet volume, the files' modification times stand in."""
    try:
        return os.readlink(folder / "..data")
    except OSError:
        return tuple((folder / name).stat().st_mtime_ns for name in ("tls.crt", "tls.key", "ca.crt")
                     if (folder / name).exists())


class Reloading:
    """Follows a mounted identity folder: `context()` returns an SSLContext built from the files as they are now,
    rebuilt only when the kubelet has swapped them (one readlink per call). If a rebuild fails (a half-written folder
    outside a kubelet volume), the previous context stays in use and the next call tries again.

    For servers, every context it builds switches each new handshake to the current one through the SNI callback
    (which OpenSSL runs for every ClientHello, with or without a server name): hand `context()` to a server framework
    once (asyncio, http.server, aiohttp...) and renewed certificates are still served. The switch carries the new
    certificate and trust bundle only: OpenSSL keeps the verify mode the handshake began with, so a server goes from
    optional to strict mTLS by being started again with the new setting (as `make demo` shows), not by a builder that
    changes it live. `reloads` counts the contexts built, the first included.
    """

    def __init__(self, folder: str | Path, build: Callable[[Path], ssl.SSLContext], server: bool = False) -> None:
        self.folder = Path(folder)
        self._build = build
        self._server = server
        self._lock = threading.Lock()
        self._seen: object = None
        self._context: ssl.SSLContext | None = None
        self.reloads = 0

    def context(self) -> ssl.SSLContext:
        version = _version(self.folder)
        if version != self._seen or self._context is None:
            with self._lock:
                if version != self._seen or self._context is None:
                    try:
                        fresh = self._build(self.folder)
                    except (OSError, ssl.SSLError):
                        if self._context is None:
                            raise
                    else:
                        if self._server:
                            fresh.sni_callback = self._switch
                        self._context, self._seen = fresh, version
                        self.reloads += 1
        return self._context

    def _switch(self, sock: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        current = self.context()
        if sock.context is not current:
            sock.context = current


def reloading_server(folder: str | Path, require_client_cert: bool = True) -> Reloading:
    """A server identity that follows its mounted Secret; give `.context()` to the listening socket once."""
    return Reloading(folder, lambda path: server_context(path, require_client_cert), server=True)


def reloading_client(folder: str | Path, present_identity: bool = True) -> Reloading:
    """A client identity that follows its mounted Secret; call `.context()` for each new connection."""
    return Reloading(folder, lambda path: client_context(path, present_identity))
