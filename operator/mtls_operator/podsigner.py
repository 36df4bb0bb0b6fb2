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
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import quote

from . import metrics, pki, podcert
from .clustertrustbundle import ClusterTrustBundlePublisher
from .config import Settings
from .issuer import Issuer
from .kube import CERTIFICATES, ApiError, Conflict, Fenced, Kube, NotFound

log = logging.getLogger(__name__)
# Signing waited in the queue longer than this: the time is taken again (notBefore must stay within 5 minutes of the
# API server's clock, and is backdated up to 3).
MAX_QUEUE = dt.timedelta(seconds=90)


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
    RETRY_FIRST, RETRY_MAX = 2.0, 60.0  # seconds: a request whose answer failed is tried again, doubling
    NEGATIVE_TTL = 10.0  # seconds a namespace found not opted in is believed without asking again

    def __init__(self, settings: Settings, kube: Kube, issuer: Issuer,
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 post_event: Callable[[Mapping[str, Any], str, str, str, str], None]) -> None:
        self.settings, self.kube, self.issuer, self._spawn = settings, kube, issuer, spawn
        self._post_event = post_event
        self.signer = settings.pod_signer
        self.serving = False
        self.enabled_namespaces: set[str] = set()
        self._not_enabled: dict[str, float] = {}  # namespace -> monotonic time it was last found not opted in
        self._inflight: set[str] = set()  # request uids being answered
        self._pending: dict[str, dict[str, Any]] = {}  # uid -> request waiting for a CA
        self._attempts: dict[str, int] = {}  # uid -> failed answers so far (for the retry's backoff)
        self._stopped = False
        self._watches: list[asyncio.Task[None]] = []  # its list-and-watch streams, cancelled by stop()
        self.trust_bundle = ClusterTrustBundlePublisher(
            kube, self.signer, lambda: issuer.ca.bundle_pem if issuer.ca else None, spawn)
        issuer.on_change(self._ca_changed)

    # ---- start-up ----

    async def start(self) -> None:
        """Serves only where the API does: Kubernetes 1.37 (or 1.35/1.36 with the feature gates and the v1 API on).
        Runs before the CA is loaded, so no rotation step is taken before the signer's records can be read."""
        resources = await self.kube.served_resources("certificates.k8s.io/v1")
        if "podcertificaterequests" not in resources:
            log.warning("the API server does not serve certificates.k8s.io/v1 PodCertificateRequests (Kubernetes "
                        "before 1.37, or the feature is off): the pod-certificate signer %s is idle", self.signer)
            return
        if "clustertrustbundles" not in resources:
            log.error("the API server serves PodCertificateRequests but not ClusterTrustBundles: the pod-certificate "
                      "signer %s is idle (pods could not get its trust anchors)", self.signer)
            return
        self.trust_bundle.signer_api = True  # from here on, a rotation must know what was signed
        selector = self.settings.pod_cert_namespace_selector
        if selector:
            try:
                items, version = await self.kube.list_whole("/api/v1/namespaces", label_selector=selector)
            except ApiError as e:  # RBAC without namespaces: signing everywhere would be the unsafe side
                log.error("cannot list namespaces labelled %s (%s): the pod-certificate signer %s is idle", selector,
                          e, self.signer)
                return
            self._namespaces_listed(items)
            self._watch(self.kube.watch("/api/v1/namespaces", version, self._namespace_event, self._namespaces_listed,
                                        label_selector=selector))
        if self._stopped:  # stopped while start-up awaited the API: this term is over before it began
            return
        self.trust_bundle.start()
        for path in self._request_paths():
            self._watch(self.kube.watch(path, "", self._request_event, self._requests_listed,
                                        field_selector=f"spec.signerName={self.signer}", metadata_only=False))
        self.serving = True
        metrics.pod_signer_serving.set(1)
        log.info("signing PodCertificateRequests for %s (namespaces: %s)", self.signer,
                 f"labelled {selector}" if selector else "all served")

    def stop(self) -> None:
        """This term is over (a lost lease, or shutdown): nothing more is answered or published from it."""
        self._stopped = True
        for task in self._watches:
            task.cancel()
        self._watches.clear()
        self.serving = False
        self.trust_bundle.stop()
        metrics.pod_signer_serving.set(0)

    def _watch(self, stream: Coroutine[Any, Any, None]) -> None:
        if self._stopped:
            stream.close()
            return
        self._watches.append(asyncio.get_running_loop().create_task(stream))

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
            self._not_enabled.pop(name, None)

    def _requests_listed(self, items: list[dict[str, Any]]) -> None:
        listed = {item.get("metadata", {}).get("uid", "") for item in items}
        for uid in set(self._pending) - listed:  # deleted while the watch was down
            self._pending.pop(uid, None)
            self._attempts.pop(uid, None)
        for item in items:
            self._request_event("ADDED", item)

    def _request_event(self, kind: str, body: dict[str, Any]) -> None:
        if self._stopped:
            return  # this term is over: the next leader answers
        uid = body.get("metadata", {}).get("uid", "")
        if kind == "DELETED" or podcert.settled(body):
            self._pending.pop(uid, None)
            self._attempts.pop(uid, None)
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
        if time.monotonic() - self._not_enabled.get(namespace, -self.NEGATIVE_TTL) < self.NEGATIVE_TTL:
            return False  # a flood of pods there costs one look per namespace and period, not one each
        # A denial is final for the pod: before giving one, ask once more, in case the label was set just before the
        # pod was made and our watch has not shown it yet.
        body = await self.kube.get_namespace(namespace)
        if body is not None and labels_match(selector, (body.get("metadata") or {}).get("labels") or {}):
            self.enabled_namespaces.add(namespace)
            return True
        self._not_enabled[namespace] = time.monotonic()
        if len(self._not_enabled) > 4096:  # bounded: the oldest are forgotten (and asked about again)
            for stale in sorted(self._not_enabled, key=self._not_enabled.__getitem__)[:1024]:
                del self._not_enabled[stale]
        return False

    # ---- decide and act ----

    async def _answer(self, body: dict[str, Any], seen: float) -> None:
        meta = body.get("metadata", {})
        uid, where = meta.get("uid", ""), f"{meta.get('namespace')}/{meta.get('name')}"
        try:
            request = podcert.parse(body)
            decision = podcert.decide(
                request, signer=self.signer, namespace_enabled=await self.namespace_enabled(request.namespace),
                namespace_rule=f"namespace label {self.settings.pod_cert_namespace_selector}",
                rules=self.issuer.policies.values(), trust_domain=self.settings.trust_domain,
                cluster_domain=self.settings.cluster_domain, max_lifetime=self.settings.pod_cert_max_lifetime)
            if isinstance(decision, podcert.Deny):
                await self._deny(request, decision)
            else:
                await self._sign(request, body, decision)
            self._attempts.pop(uid, None)
            metrics.pod_certificate_seconds.observe(time.monotonic() - seen)
        except Fenced:
            pass  # the lease is lost: the next leader answers
        except asyncio.CancelledError:
            raise
        except Exception as e:  # API trouble, a refused write: the pod waits, so the answer is tried again
            attempts = self._attempts[uid] = self._attempts.get(uid, 0) + 1
            delay = min(self.RETRY_FIRST * 2 ** (attempts - 1), self.RETRY_MAX)
            log.warning("could not answer PodCertificateRequest %s (%s: %s); trying again in %.0f s", where,
                        type(e).__name__, e, delay)
            asyncio.get_running_loop().call_later(delay, self._retry, uid, body)
        finally:
            self._inflight.discard(uid)

    def _retry(self, uid: str, body: dict[str, Any]) -> None:
        if uid in self._attempts and uid not in self._inflight:
            self._request_event("MODIFIED", body)

    async def _sign(self, request: podcert.Request, body: dict[str, Any], decision: podcert.Sign) -> None:
        if self.issuer.ca is None:
            self._pending[request.uid] = body
            log.info("PodCertificateRequest %s/%s waits: no usable CA is loaded", request.namespace, request.name)
            return
        if not self.trust_bundle.written:
            raise RuntimeError(f"ClusterTrustBundle {self.trust_bundle.name} not written yet: no certificate leaves "
                               f"before its record can")
        for _ in range(3):
            ca = self.issuer.ca
            if ca is None:
                self._pending[request.uid] = body
                return
            # The time is taken in the signing slot (a long queue must not leave notBefore too far behind the API
            # server's clock), and the CA checked again after it: one that changed meanwhile signs afresh.
            cert, ca, now = await self._signed(request, decision, ca)
            if self.issuer.ca is ca and self.issuer.clock() - now < MAX_QUEUE:
                break
        else:
            raise RuntimeError("the CA kept changing, or signing kept queueing, while answering")
        problem = podcert.lifetime_problem(cert)
        if problem:  # the CA itself ends within the hour: a new one (rotation, or an admin) must come first
            self._pending[request.uid] = body
            log.warning("PodCertificateRequest %s/%s waits: %s", request.namespace, request.name, problem)
            return
        # Recorded before it leaves: a root rotation keeps the old root until this certificate has expired.
        await self.trust_bundle.record_signed(ca.anchor_fingerprint, cert.not_valid_after_utc, decision.lifetime,
                                              now)
        written = await self._write(request, podcert.issued_status(
            cert, ca.chain_pem(), request.uid, now, self.settings.pod_cert_refresh))
        if written:
            metrics.pod_certificates.labels("issued", "").inc()
            log.info("signed pod certificate %s/%s for pod %s: serial %s, %s key, valid until %s",
                     request.namespace, request.name, request.pod_name, pki.serial_hex(cert), decision.key_type,
                     cert.not_valid_after_utc.isoformat())

    async def _signed(self, request: podcert.Request, decision: podcert.Sign, ca: Any) -> tuple[Any, Any, Any]:
        def shape(now: dt.datetime, authority: Any) -> tuple[pki.LeafRequest, dt.timedelta]:
            back, duration = podcert.validity(now, authority.cert.not_valid_before_utc, decision.lifetime,
                                              self.settings.backdate)
            return dataclasses.replace(decision.leaf, duration=duration), back

        signed = await self.issuer.sign(request.namespace, shape, decision.public_key)
        return signed.cert, signed.ca, signed.now

    async def _deny(self, request: podcert.Request, deny: podcert.Deny) -> None:
        now = self.issuer.clock().replace(microsecond=0)
        if not await self._write(request, podcert.denied_status(deny, now)):
            return
        metrics.pod_certificates.labels("denied", deny.reason).inc()
        log.warning("denied PodCertificateRequest %s/%s of pod %s: %s: %s", request.namespace, request.name,
                    request.pod_name, deny.reason, deny.message)
        pod = {"apiVersion": "v1",
               "metadata": {"name": request.pod_name, "namespace": request.namespace, "uid": request.pod_uid}}
        self._post_event(pod, "Pod", "Warning", "PodCertificateDenied",
                         f"{self.signer} denied the pod certificate ({deny.reason}): {deny.message}")

    async def _write(self, request: podcert.Request, status: dict[str, Any]) -> bool:
        """The one status write; False when the request was answered meanwhile or is gone. Other refusals raise (the
        answer is tried again)."""
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
