"""Every Kubernetes API call the operator makes (besides the watch streams kopf runs for it), in one thin layer.

Calls go through the official client's configuration and connection pool, but as raw JSON: the typed models cost more
CPU than the rest of an issuance. The client is synchronous, so calls run on a bounded thread pool; that bound is also
the number of requests in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import kubernetes

from .spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)
COMPONENT = "mtls-operator"
LEASE_REQUEST_TIMEOUT = 4.0  # well inside the renew deadline, so a hung request cannot outlast the lease


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: AlreadyExists on create, or a stale resourceVersion on update."""


def load_client_config() -> kubernetes.client.Configuration:
    """In-cluster service-account credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


class Kube:
    def __init__(self, config: kubernetes.client.Configuration | None = None, workers: int = 16) -> None:
        config = config or load_client_config()
        config.connection_pool_maxsize = workers
        self._client = kubernetes.client.ApiClient(config)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        # The Lease has a thread of its own: a renewal must never queue behind thousands of Secret writes.
        self._lease_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._lease_pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # ---- plumbing ----

    def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                 query: Mapping[str, str] | None = None, timeout: float | None = 30) -> Any:
        headers = {"Accept": "application/json", "User-Agent": COMPONENT}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, h, b, p = self._client.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"])
        resp = self._client.call_api(m, url, h, b, p, _request_timeout=timeout)
        data = resp.read()
        payload = json.loads(data) if data else {}
        if resp.status >= 400:
            reason, message = payload.get("reason", ""), payload.get("message", data[:200].decode(errors="replace"))
            cls = NotFound if resp.status == 404 else Conflict if resp.status == 409 else ApiError
            raise cls(resp.status, reason, message)
        return payload

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._request, method, path, body, content_type)

    async def _lease_call(self, method: str, path: str, body: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._lease_pool, lambda: self._request(method, path, body, timeout=LEASE_REQUEST_TIMEOUT))

    # ---- Secrets ----

    @staticmethod
    def _secrets(namespace: str) -> str:
        return f"/api/v1/namespaces/{quote(namespace)}/secrets"

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", f"{self._secrets(namespace)}/{quote(name)}")
        except NotFound:
            return None

    async def list_all(self, api: str, plural: str, namespaces: tuple[str, ...] = (),
                       label_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a resource, in pages: cluster-wide, or one list per namespace when namespaces are given.
        `api` is "/api/v1" or "/apis/<group>/<version>"."""
        paths = [f"{api}/namespaces/{quote(ns)}/{plural}" for ns in namespaces] or [f"{api}/{plural}"]
        out: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        for path in paths:
            token = ""
            while True:
                query = {"limit": "500", **({"labelSelector": label_selector} if label_selector else {}),
                         **({"continue": token} if token else {})}
                page = await loop.run_in_executor(self._pool, lambda q=query, p=path: self._request("GET", p, query=q))
                out.extend(page.get("items") or [])
                token = page.get("metadata", {}).get("continue", "")
                if not token:
                    break
        return out

    async def create_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", self._secrets(body["metadata"]["namespace"]), body)

    async def replace_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A full PUT carrying metadata.resourceVersion: fails with Conflict if anyone wrote in between."""
        meta = body["metadata"]
        return await self._call("PUT", f"{self._secrets(meta['namespace'])}/{quote(meta['name'])}", body)

    # ---- Workloads to roll (restartTargets) ----

    @staticmethod
    def _workload(namespace: str, kind: str, name: str) -> str:
        plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}[kind]
        return f"/apis/apps/v1/namespaces/{quote(namespace)}/{plural}/{quote(name)}"

    async def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._workload(namespace, kind, name))
        except NotFound:
            return None

    async def annotate_pod_template(self, namespace: str, kind: str, name: str,
                                    annotations: Mapping[str, str]) -> dict[str, Any]:
        """A pod-template annotation change makes the workload controller roll its pods."""
        patch = {"spec": {"template": {"metadata": {"annotations": dict(annotations)}}}}
        return await self._call("PATCH", self._workload(namespace, kind, name), patch, "application/merge-patch+json")

    # ---- ServiceAccounts ----

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(name)}")
        except NotFound:
            return None

    # ---- ConfigMaps (trust bundles) ----

    async def create_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"/api/v1/namespaces/{quote(body['metadata']['namespace'])}/configmaps", body)

    async def replace_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        path = f"/api/v1/namespaces/{quote(meta['namespace'])}/configmaps/{quote(meta['name'])}"
        return await self._call("PUT", path, body)

    # ---- MtlsIdentities ----

    @staticmethod
    def _identity(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}"

    async def create_identity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"]["namespace"]
        return await self._call("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}", body)

    async def get_identity(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._identity(namespace, name))
        except NotFound:
            return None

    async def delete_identity(self, namespace: str, name: str) -> None:
        """Foreground is not needed: the Secret it owns goes with it through the garbage collector."""
        with contextlib.suppress(NotFound):
            await self._call("DELETE", self._identity(namespace, name))

    async def patch_identity_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", self._identity(namespace, name) + "/status", {"status": patch},
                                "application/merge-patch+json")

    # ---- MtlsAuthority (cluster-scoped) ----

    async def create_authority(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"/apis/{GROUP}/{VERSION}/mtlsauthorities", body)

    async def patch_authority_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"/apis/{GROUP}/{VERSION}/mtlsauthorities/{quote(name)}/status",
                                {"status": status}, "application/merge-patch+json")

    # ---- Leases (leader election) ----

    @staticmethod
    def _leases(namespace: str) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases"

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._lease_call("GET", f"{self._leases(namespace)}/{quote(name)}")

    async def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return await self._lease_call("POST", self._leases(namespace), {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    async def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the resourceVersion it was read at: of two contenders, one wins."""
        meta = lease["metadata"]
        return await self._lease_call("PUT", f"{self._leases(meta['namespace'])}/{quote(meta['name'])}", lease)

    # ---- Events ----

    async def post_event(self, involved: Mapping[str, Any], kind: str, event_type: str, reason: str,
                         message: str) -> None:
        """A core/v1 Event (what `kubectl describe` shows). Best effort: a lost Event must not fail a reconcile."""
        meta = involved.get("metadata", {})
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = meta.get("namespace") or "default"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'object')[:200]}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {"apiVersion": involved.get("apiVersion", "v1"), "kind": kind, "name": meta.get("name"),
                               "namespace": namespace, "uid": meta.get("uid")},
            "type": event_type, "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body)
        except Exception as e:  # network errors too: an Event is never worth a failed reconcile
            log.warning("could not post event %s for %s/%s: %s", reason, namespace, meta.get("name"), e)

    # ---- reviews for the secure /metrics endpoint (metricsserver.py) ----

    async def create_token_review(self, token: str) -> dict[str, Any]:
        """Who a bearer token belongs to. The token is in the request body only: never logged, never in an error."""
        return await self._call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})

    async def create_subject_access_review(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": dict(spec)})

    # ---- one object's watch (the CA Secret, which kopf's label-filtered Secret watch does not see) ----

    def watch_secret(self, namespace: str, name: str, on_change: Callable[[dict[str, Any] | None], None],
                     stop: threading.Event) -> None:
        """Blocking: calls on_change(body or None) now and on every change of one Secret, until `stop` is set.

        Runs on its own thread. Re-lists after the server expires the resourceVersion (410) or the stream ends.
        """
        base = self._secrets(namespace)
        selector = f"metadata.name={name}"
        backoff = 1.0
        while not stop.is_set():
            try:
                listing = self._request("GET", base, query={"fieldSelector": selector})
                items = listing.get("items") or []
                on_change(items[0] if items else None)
                version = listing["metadata"]["resourceVersion"]
                backoff = 1.0
                while not stop.is_set():
                    version = self._watch_once(base, selector, version, on_change)
                    if version is None:
                        break  # expired: list again
            except Exception as e:  # the watch must outlive API hiccups
                log.warning("CA Secret watch failed (%s); retrying in %.0fs", e, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _watch_once(self, base: str, selector: str, version: str,
                    on_change: Callable[[dict[str, Any] | None], None]) -> str | None:
        m, url, h, b, p = self._client.param_serialize(
            "GET", base, query_params=[("fieldSelector", selector), ("watch", "true"),
                                       ("resourceVersion", version), ("timeoutSeconds", "290"),
                                       ("allowWatchBookmarks", "true")],
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        resp = self._client.call_api(m, url, h, b, p, _request_timeout=(10, 330))
        raw = resp.response
        try:
            if resp.status >= 400:
                return None
            buffer = b""
            for chunk in raw.stream(4096, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        return None
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        on_change(obj)
                    elif event.get("type") == "DELETED":
                        on_change(None)
            return version
        finally:
            with contextlib.suppress(Exception):
                raw.release_conn()

