"""The signer's ClusterTrustBundle: the trust anchors of our CA, cluster-wide, for pods to mount with a
`clusterTrustBundle` projection (signerName + labelSelector) next to their `podCertificate` volume. It carries exactly
what every `ca.crt` and `mtls-trust-bundle` ConfigMap carries — both roots during a root rotation — and is healed if
edited. The API asks that it be named after the signer (`<domain>:<name>:` then our suffix), and admission lets only
a holder of `attest` on the signer write it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from . import pki, timestamps, tlssecret
from .kube import CERTIFICATES, ApiError, Conflict, Kube
from .spec import GROUP

log = logging.getLogger(__name__)
SUFFIX = "trust-anchors"
# Pod certificates leave no trace once the API's cleaner deletes their requests (15 minutes), yet a root rotation must
# not drop the old root while one signed under it is still valid. So, before a pod certificate is handed out, the
# bundle records how long certificates under that root may live: one annotation per trust anchor (fingerprint prefix),
# rounded up by a quarter of the certificate's lifetime so that a steady stream of signings costs a handful of writes
# a day, not one each.
SIGNED_UNTIL = f"{GROUP}/signed-until-"


def signed_until(body: dict[str, Any] | None) -> dict[str, dt.datetime]:
    """issuer fingerprint prefix -> the latest notAfter recorded for pod certificates it signed."""
    out: dict[str, dt.datetime] = {}
    for key, value in ((body or {}).get("metadata", {}).get("annotations") or {}).items():
        if key.startswith(SIGNED_UNTIL):
            try:
                out[key[len(SIGNED_UNTIL):]] = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return out


def record(marks: dict[str, dt.datetime], issuer: str, not_after: dt.datetime, lifetime: dt.timedelta,
           now: dt.datetime) -> dict[str, dt.datetime] | None:
    """The marks to write so `issuer`'s covers `not_after` (expired marks dropped), or None when they already do."""
    if marks.get(issuer, now) >= not_after:
        return None
    fresh = {fp: until for fp, until in marks.items() if until > now}
    fresh[issuer] = (not_after + lifetime / 4).replace(microsecond=0)
    return fresh


def _version(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def name_for(signer: str) -> str:
    return f"{signer.replace('/', ':')}:{SUFFIX}"


def anchors(bundle_pem: bytes) -> str:
    """The bundle as the API accepts it: CA certificates only, each once, no PEM headers."""
    out: list[bytes] = []
    for cert in pki.load_chain(bundle_pem):
        pem = pki.to_pem(cert)
        if pki.is_ca(cert) and pem not in out:
            out.append(pem)
    return b"".join(out).decode()


def desired(signer: str, bundle_pem: bytes, marks: dict[str, dt.datetime]) -> dict[str, Any]:
    return {
        "apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundle",
        "metadata": {"name": name_for(signer), "labels": {tlssecret.MANAGED_BY: tlssecret.MANAGED_BY_VALUE},
                     "annotations": {SIGNED_UNTIL + fp: timestamps.text(until)
                                     for fp, until in sorted(marks.items())}},
        "spec": {"signerName": signer, "trustBundle": anchors(bundle_pem)},
    }


class ClusterTrustBundlePublisher:
    """`serving`: the API serves ClusterTrustBundles and this term publishes (set at start, cleared at stop).
    `written`: a read or write of our bundle has succeeded — only then is it waited for, and only then may pod
    certificates be handed out (each needs its record first)."""

    RETRY = 5.0  # seconds before a failed write is tried again (doubling to a minute)

    def __init__(self, kube: Kube, signer: str, bundle: Callable[[], bytes | None],
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.kube, self.signer, self.name = kube, signer, name_for(signer)
        self._bundle, self._spawn = bundle, spawn
        self.current: dict[str, Any] | None = None  # as last seen or written (the newest resourceVersion)
        self.serving = False
        self.written = False
        self.signer_api = False  # the API serves PodCertificateRequests: pod certificates may exist
        self._lock = asyncio.Lock()
        self._retry = self.RETRY
        self._retry_handle: asyncio.TimerHandle | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watches our one bundle by name (so an edit or a deletion is healed), and publishes it."""
        self.serving = True
        self._watch = asyncio.get_running_loop().create_task(
            self.kube.watch_one(f"{CERTIFICATES}/clustertrustbundles", self.name, self._seen))

    def stop(self) -> None:
        self.serving = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._retry_handle is not None:
            self._retry_handle.cancel()

    def _seen(self, body: dict[str, Any] | None) -> None:
        if not self.serving:
            return
        if body is not None and self.current is not None and _version(body) < _version(self.current):
            return  # older than our own write's answer
        self.current = body
        self.ensure_soon()

    def ensure_soon(self) -> None:
        if self.serving:
            self._spawn(self.ensure())

    def stale(self) -> int:
        """1 while the published bundle is not the current one (a root rotation's Propagating phase waits for it)."""
        bundle = self._bundle()
        if not (self.serving and self.written) or bundle is None:
            return 0
        if (self.current or {}).get("spec", {}).get("trustBundle") == anchors(bundle):
            return 0
        self.ensure_soon()  # asked while stale: try again now rather than wait for the next event
        return 1

    async def records(self) -> dict[str, dt.datetime] | None:
        """The signed-until records, read from the API if not seen yet; None when they cannot be known (the bundle
        is gone or unreadable: its records with it)."""
        if self.current is None:
            try:
                self.current = await self.kube.get_cluster_trust_bundle(self.name)
            except ApiError:
                return None
        return signed_until(self.current) if self.current is not None else None

    async def ensure(self) -> None:
        try:
            await self._write()
            self._retry = self.RETRY
        except Conflict:
            return  # it changed meanwhile: the watch brings the new version, and we look again
        except ApiError as e:
            log.warning("could not write ClusterTrustBundle %s: %s; trying again in %.0f s", self.name, e,
                        self._retry)
            if self._retry_handle is not None:
                self._retry_handle.cancel()
            self._retry_handle = asyncio.get_running_loop().call_later(self._retry, self.ensure_soon)
            self._retry = min(self._retry * 2, 60.0)

    async def record_signed(self, anchor_fingerprint: str, not_after: dt.datetime, lifetime: dt.timedelta,
                            now: dt.datetime) -> None:
        """Before a pod certificate is handed out: the bundle must say how long certificates chaining to its trust
        anchor live. Raises when that cannot be written (the certificate is then not handed out)."""
        for _ in range(3):
            try:
                await self._write((anchor_fingerprint[:16], not_after, lifetime, now))
                return
            except Conflict:
                self.current = await self.kube.get_cluster_trust_bundle(self.name)
        raise Conflict(409, "Conflict", f"ClusterTrustBundle {self.name} kept changing while recording a signing")

    async def _write(self, mark: tuple[str, dt.datetime, dt.timedelta, dt.datetime] | None = None) -> None:
        bundle = self._bundle()
        if bundle is None:
            return
        async with self._lock:
            current = self.current
            if current is None:
                current = await self.kube.get_cluster_trust_bundle(self.name)
            marks = signed_until(current)
            if mark is not None:
                marks = record(marks, *mark) or marks
            want = desired(self.signer, bundle, marks)
            if current is not None and current.get("spec", {}).get("trustBundle") == want["spec"]["trustBundle"] \
                    and signed_until(current) == marks:
                self.current, self.written = current, True
                return
            if current is None:
                self.current = await self.kube.create_cluster_trust_bundle(want)
            else:
                want["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.current = await self.kube.replace_cluster_trust_bundle(want)
            self.written = True
            if mark is None:
                log.info("published ClusterTrustBundle %s (%d trust anchors)", self.name,
                         want["spec"]["trustBundle"].count("BEGIN CERTIFICATE"))
