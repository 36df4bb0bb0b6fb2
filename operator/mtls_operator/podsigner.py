"""The PodCertificateRequest signer: the second front on the issuer (issuer.py), next to the MtlsIdentity reconciler.

event (a request for our signer, from a watch of its own) → read (the request, the namespace's opt-in) → decide
(podcert.decide, pure) → act (sign in a fair slot, one status write) — and nothing is scheduled: the kubelet asks
again, with a new key, at the beginRefreshAt we answered.

A request is answered exactly once. One with a chain or a terminal condition is never touched (the API refuses it
anyway); the status write is conditional on the resourceVersion read, so two answers cannot race; a request that
cannot be answered yet (no CA loaded) stays pending and is looked at again when the CA arrives. The private key never
exists here: only the stub CSR's public key is signed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from . import metrics, pki, podcert
from .clustertrustbundle import ClusterTrustBundlePublisher
from .config import Settings
from .issuer import Issuer
from .kube import CERTIFICATES, ApiError, Conflict, Fenced, Kube, NotFound

log = logging.getLogger(__name__)


def labels_match(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based label selector (`a=b,c==d,e!=f,g`, the form the namespace selector takes) against labels."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


class PodSigner:
    def __init__(self, settings: Settings, kube: Kube, issuer: Issuer,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.settings, self.kube, self.issuer, self._spawn = settings, kube, issuer, spawn
        self.signer = settings.pod_signer
        self.serving = False
        self.enabled_namespaces: set[str] = set()
        self._inflight: set[str] = set()  # request uids being answered
        self._pending: dict[str, dict[str, Any]] = {}  # uid -> request waiting for a CA
        self._stop = threading.Event()
        self.trust_bundle = ClusterTrustBundlePublisher(
            kube, self.signer, lambda: issuer.ca.bundle_pem if issuer.ca else None, spawn)
        issuer.on_change(self._ca_changed)

    # ---- start-up ----

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serves only where the API does: Kubernetes 1.37 (or 1.35/1.36 with the feature gates and the v1 API on)."""
        resources = await self.kube.served_resources("certificates.k8s.io/v1")
        if "podcertificaterequests" not in resources:
            log.warning("the API server does not serve certificates.k8s.io/v1 PodCertificateRequests (Kubernetes "
                        "before 1.37, or the feature is off): the pod-certificate signer %s is idle", self.signer)
            return
        if "clustertrustbundles" in resources:
            self.trust_bundle.start(loop, self._stop)
        selector = self.settings.pod_cert_namespace_selector
        if selector:
            try:
                items, version = await loop.run_in_executor(
                    None, lambda: self.kube.list_objects("/api/v1/namespaces", label_selector=selector))
            except ApiError as e:  # RBAC without namespaces: signing everywhere would be the unsafe side
                log.error("cannot list namespaces labelled %s (%s): the pod-certificate signer %s is idle", selector,
                          e, self.signer)
                return
            self._namespaces_listed(items)
            threading.Thread(target=self.kube.watch_objects, name="pod-cert-namespaces", daemon=True,
                             args=("/api/v1/namespaces", version, self._threadsafe(loop, self._namespace_event),
                                   self._threadsafe(loop, self._namespaces_listed), self._stop),
                             kwargs={"label_selector": selector}).start()
        for path in self._request_paths():
            threading.Thread(target=self.kube.watch_objects, name="pod-cert-requests", daemon=True,
                             args=(path, "", self._threadsafe(loop, self._request_event),
                                   self._threadsafe(loop, self._requests_listed), self._stop),
                             kwargs={"field_selector": f"spec.signerName={self.signer}",
                                     "metadata_only": False}).start()
        self.serving = True
        metrics.pod_signer_serving.set(1)
        log.info("signing PodCertificateRequests for %s (namespaces: %s)", self.signer,
                 f"labelled {selector}" if selector else "all served")

    def stop(self) -> None:
        self._stop.set()
        metrics.pod_signer_serving.set(0)

    @staticmethod
    def _threadsafe(loop: asyncio.AbstractEventLoop, handler: Callable[..., None]) -> Callable[..., None]:
        return lambda *args: loop.call_soon_threadsafe(handler, *args)

    def _request_paths(self) -> list[str]:
        if self.settings.namespaces:
            return [f"{CERTIFICATES}/namespaces/{quote(ns)}/podcertificaterequests" for ns in self.settings.namespaces]
        return [f"{CERTIFICATES}/podcertificaterequests"]

    # ---- inputs ----

    def _namespaces_listed(self, items: list[dict[str, Any]]) -> None:
        self.enabled_namespaces = {item["metadata"]["name"] for item in items}

    def _namespace_event(self, kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if kind == "DELETED":
            self.enabled_namespaces.discard(name)
        else:
            self.enabled_namespaces.add(name)

    def _requests_listed(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self._request_event("ADDED", item)

    def _request_event(self, kind: str, body: dict[str, Any]) -> None:
        if self._stop.is_set():
            return  # this term is over (a lost lease, or shutdown): the next leader answers
        uid = body.get("metadata", {}).get("uid", "")
        if kind == "DELETED" or podcert.settled(body):
            self._pending.pop(uid, None)
            return
        if uid in self._inflight:
            return
        self._inflight.add(uid)
        self._spawn(self._answer(body, time.monotonic()))

    def _ca_changed(self) -> None:
        self.trust_bundle.ensure_soon()
        pending, self._pending = list(self._pending.values()), {}
        for body in pending:
            self._request_event("ADDED", body)

    async def namespace_enabled(self, namespace: str) -> bool:
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            return False
        selector = self.settings.pod_cert_namespace_selector
        if not selector or namespace in self.enabled_namespaces:
            return True
        # A denial is final for the pod: before giving one, ask once more, in case the label was set just before the
        # pod was made and our watch has not shown it yet.
        body = await self.kube.get_namespace(namespace)
        labels = ((body or {}).get("metadata") or {}).get("labels") or {}
        if labels_match(selector, labels):
            self.enabled_namespaces.add(namespace)
            return True
        return False

    # ---- decide and act ----

    async def _answer(self, body: dict[str, Any], seen: float) -> None:
        request = podcert.parse(body)
        try:
            decision = podcert.decide(
                request, signer=self.signer, namespace_enabled=await self.namespace_enabled(request.namespace),
                namespace_rule=f"namespace label {self.settings.pod_cert_namespace_selector}",
                rules=self.issuer.policies.values(), trust_domain=self.settings.trust_domain,
                cluster_domain=self.settings.cluster_domain, max_lifetime=self.settings.pod_cert_max_lifetime)
            if isinstance(decision, podcert.Deny):
                await self._deny(request, decision)
            else:
                await self._sign(request, body, decision)
        except Fenced:
            pass  # the lease is lost: the next leader answers
        except Exception:
            log.exception("could not answer PodCertificateRequest %s/%s", request.namespace, request.name)
        finally:
            self._inflight.discard(request.uid)
            metrics.pod_certificate_seconds.observe(time.monotonic() - seen)

    async def _sign(self, request: podcert.Request, body: dict[str, Any], decision: podcert.Sign) -> None:
        ca = self.issuer.ca
        if ca is None:
            self._pending[request.uid] = body
            log.warning("PodCertificateRequest %s/%s waits: no usable CA is loaded", request.namespace, request.name)
            return
        now = self.issuer.clock().replace(microsecond=0)
        back, duration = podcert.validity(now, ca.cert.not_valid_before_utc, decision.lifetime,
                                          self.settings.backdate)
        leaf = dataclasses.replace(decision.leaf, duration=duration)
        cert, _, ca = await self.issuer.sign(request.namespace, leaf, decision.public_key, ca=ca, backdate=back,
                                             now=now)
        problem = podcert.lifetime_problem(cert)
        if problem:  # the CA itself ends within the hour: a new one (rotation, or an admin) must come first
            self._pending[request.uid] = body
            log.warning("PodCertificateRequest %s/%s waits: %s", request.namespace, request.name, problem)
            return
        if self.trust_bundle.active:  # recorded before it leaves: a root rotation waits for it to expire
            await self.trust_bundle.record_signed(ca.anchor_fingerprint(), cert.not_valid_after_utc,
                                                  decision.lifetime, now)
        written = await self._write(request, podcert.issued_status(cert, ca.chain_pem(), request.uid, now))
        if written:
            metrics.pod_certificates.labels("issued", "").inc()
            log.info("signed pod certificate %s/%s for pod %s: serial %s, %s key, valid until %s",
                     request.namespace, request.name, request.pod_name, pki.serial_hex(cert), decision.key_type,
                     cert.not_valid_after_utc.isoformat())

    async def _deny(self, request: podcert.Request, deny: podcert.Deny) -> None:
        now = self.issuer.clock().replace(microsecond=0)
        if not await self._write(request, podcert.denied_status(deny, now)):
            return
        metrics.pod_certificates.labels("denied", deny.reason).inc()
        log.warning("denied PodCertificateRequest %s/%s of pod %s: %s: %s", request.namespace, request.name,
                    request.pod_name, deny.reason, deny.message)
        pod = {"apiVersion": "v1",
               "metadata": {"name": request.pod_name, "namespace": request.namespace, "uid": request.pod_uid}}
        self._spawn(self.kube.post_event(pod, "Pod", "Warning", "PodCertificateDenied",
                                         f"{self.signer} denied the pod certificate ({deny.reason}): {deny.message}"))

    async def _write(self, request: podcert.Request, status: dict[str, Any]) -> bool:
        """The one status write; False when the request was answered meanwhile, is gone, or refused."""
        try:
            await self.kube.patch_pod_certificate_status(request.namespace, request.name, request.resource_version,
                                                         status)
            return True
        except Conflict:
            fresh = await self.kube.get_pod_certificate_request(request.namespace, request.name)
            if fresh is not None and not podcert.settled(fresh):
                # Changed, not answered: look again at the new version, once this answer's bookkeeping is done.
                asyncio.get_running_loop().call_soon(self._request_event, "MODIFIED", fresh)
            return False
        except NotFound:
            return False
        except Fenced:
            raise
        except ApiError as e:
            log.error("the API server refused the answer to PodCertificateRequest %s/%s: %s", request.namespace,
                      request.name, e)
            return False
