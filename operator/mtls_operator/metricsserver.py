"""The /metrics endpoint: plain HTTP on a configurable address, or (--metrics-secure) HTTPS where every request is
authenticated and authorized by the API server (metricsauth.py decides; kube.py asks).

aiohttp (kopf's own HTTP stack) serves it on the operator's event loop rather than prometheus_client's thread, so one
server does both modes and the auth reviews are ordinary awaits. It starts before leader election, like the health
server: a standby replica is scraped too (its `mtls_operator_leader 0` is the point).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .metricsauth import MetricsAuth

log = logging.getLogger(__name__)
SELF_SIGNED_LIFETIME = dt.timedelta(days=365)


def self_signed(hosts: list[str], now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A serving certificate and key (PEM) for the metrics endpoint when none is mounted. Scrapers either skip
    verification (what the chart's ServiceMonitor does by default, as kubebuilder's does) or are given a mounted
    certificate they trust (--metrics-cert-dir). The bearer token, not the certificate, is what grants access."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h for h in hosts if h):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mtls-operator-metrics")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mtls-operator-metrics")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + SELF_SIGNED_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_context(cert_dir: str, hosts: list[str]) -> ssl.SSLContext:
    """TLS 1.2+ server context from <cert_dir>/tls.crt and tls.key, or from a fresh self-signed pair. ssl can only load
    keys from files: a generated key goes through a private temporary directory that is removed at once."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_dir:
        context.load_cert_chain(str(Path(cert_dir) / "tls.crt"), str(Path(cert_dir) / "tls.key"))
        return context
    cert_pem, key_pem = self_signed(hosts)
    folder = tempfile.mkdtemp(prefix="metrics-tls-")
    try:
        for name, data in (("tls.crt", cert_pem), ("tls.key", key_pem)):
            fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return context


def kube_reviewers(kube: Any) -> MetricsAuth:
    """A MetricsAuth asking the API server (TokenReview, then SubjectAccessReview) through kube.py."""

    async def review_token(token: str) -> Mapping[str, Any] | None:
        result = await kube.create_token_review(token)
        status = result.get("status") or {}
        return (status.get("user") or {}) if status.get("authenticated") else None

    async def review_access(user: Mapping[str, Any], path: str, verb: str) -> bool:
        spec = {"user": user.get("username", ""), "groups": user.get("groups") or [], "uid": user.get("uid", ""),
                "extra": user.get("extra") or {}, "nonResourceAttributes": {"path": path, "verb": verb}}
        result = await kube.create_subject_access_review(spec)
        return bool((result.get("status") or {}).get("allowed"))

    return MetricsAuth(review_token, review_access)


class MetricsServer:
    def __init__(self, host: str, port: int, auth: MetricsAuth | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.auth, self.context = host, port, auth, context
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.auth is not None:
            verdict = await self.auth.check(request.headers.get("Authorization"))
            if verdict.status != 200:
                headers = {"WWW-Authenticate": 'Bearer realm="mtls-operator"'} if verdict.status == 401 else None
                return web.Response(status=verdict.status, text=verdict.reason + "\n", headers=headers)
        # `name[]=<series>` (as prometheus_client's own handler and Prometheus' federation take it) restricts the
        # answer to those series; the per-identity gauges, thousands of samples, are then not even made.
        names = request.query.getall("name[]", [])
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        if not self.port:
            return
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host or None, self.port, ssl_context=self.context).start()
        log.info("serving /metrics on %s:%d (%s)", self.host or "*", self.port,
                 "HTTPS, TokenReview + SubjectAccessReview" if self.auth else "HTTP, no authentication")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def from_settings(settings: Any, kube: Any) -> MetricsServer:
    if not settings.metrics_secure:
        return MetricsServer(settings.metrics_bind_address, settings.metrics_port)
    hosts = ["localhost", socket.gethostname(), settings.metrics_bind_address,
             *(h for h in os.environ.get("MTLS_METRICS_CERT_HOSTS", "").split(",") if h.strip())]
    context = server_context(settings.metrics_cert_dir, [h.strip() for h in hosts if h not in ("", "0.0.0.0", "::")])
    return MetricsServer(settings.metrics_bind_address, settings.metrics_port, kube_reviewers(kube), context)
