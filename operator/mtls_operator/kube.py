"""Every Kubernetes API call the operator makes (besides the watch streams kopf runs for it), in one thin layer.

Calls are raw JSON (the typed models cost more CPU than the rest of an issuance). The event loop's calls go over a
pool of HTTP/1.1 connections (transport.py, http1.py), at most `workers` in flight, and the lists and watches are
read there too; only the Lease's renewals, blocking calls on a thread of their own that must not depend on the loop,
use the official client. Every write passes one gate: the write fence (fence.py), asked at the last moment before
the request leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import orjson

from .events import Pending
from .fence import Fence
from .spec import GROUP, PLURAL, VERSION
from .transport import Session

log = logging.getLogger(__name__)
COMPONENT = "mtls-operator"
LEASE_REQUEST_TIMEOUT = 4.0  # well inside the renew deadline, so a hung request cannot outlast the lease
# A read that meets a dropped connection (the server closed an idle keep-alive one, say) is sent again this many
# times; a write never is: it might have landed.
READ_RETRIES = 2
# Metadata only (what `kubectl get --show-kind` and client-go's metadata informers ask for): the API server leaves out
# data, so a Secret's size never reaches this process unless we GET it.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
PAGE = 100
WATCH_SECONDS = 290  # what a watch request asks the server for; the server ends it then, and it is made again
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CERTIFICATES = "/apis/certificates.k8s.io/v1"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: AlreadyExists on create, or a stale resourceVersion on update."""


class Fenced(ApiError):
    """Refused before it left the process: this replica no longer holds the lease with margin (fence.py). An ApiError
    (status 0), so every caller's handling of a failed write applies; nothing was sent."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(0, "Fenced", f"{method} {path} not sent: this replica does not hold the lease")


def load_client_config() -> kubernetes.client.Configuration:
    """In-cluster service-account credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


class Kube:
    """`fence`: when given (leader election on), every mutating call but the Lease's own is refused once it is closed —
    checked just before the request is sent (after it had its turn among the calls in flight), so work that waited (a
    queue, a key generation, a paused process) cannot slip a write past a lost lease. `user_agent` names the replica in
    the audit log."""

    def __init__(self, config: kubernetes.client.Configuration | None = None, workers: int = 16,
                 fence: Fence | None = None, user_agent: str = COMPONENT) -> None:
        config = config or load_client_config()
        self.fence, self.user_agent = fence, user_agent
        # The Lease's client: without urllib3's retries (a retried renewal would stretch one attempt past the renew
        # deadline), with connections of its own.
        no_retries = copy.deepcopy(config)
        no_retries.retries = False
        self._lease_client = kubernetes.client.ApiClient(no_retries)
        self._lease_client.user_agent = user_agent  # the client's default headers win over per-request ones
        self._session = Session(config, workers, user_agent)

    async def close(self) -> None:
        await self._session.close()
        self._lease_client.close()

    # ---- plumbing ----

    def _gate(self, method: str, path: str, fenced: bool) -> None:
        """The last moment before a request leaves. The Lease's own calls pass (fenced=False): they are how the lease
        is won back, and its resourceVersion already guards them."""
        if fenced and self.fence is not None and method in MUTATING and not self.fence.is_open():
            raise Fenced(method, path)

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                    query: Mapping[str, str] | None = None, fenced: bool = True, timeout: float = 30,
                    accept: str = "application/json", low: bool = False) -> Any:
        """One call from the event loop (transport.py). Network errors are OSErrors (ConnectionError, ssl.SSLError)
        and TimeoutError. `low`: it waits until no other call waits for a slot (Events)."""
        client, slots = self._session.open()
        data = orjson.dumps(body) if body is not None else None
        target = f"{path}?{urlencode(query)}" if query else path
        extra = {"Accept": accept, **({"Content-Type": content_type} if data is not None else {})}
        retries = 0 if method in MUTATING else READ_RETRIES
        gate = functools.partial(self._gate, method, path, fenced)
        async with slots.take(low):  # a slot means a connection: nothing queues between the gate and the wire
            while True:
                gate()  # before connecting: a write refused now touches nothing
                try:
                    # ...and again once connected (that can take seconds), just before the bytes leave.
                    status, answer = await client.request(method, target, self._session.headers(extra), data,
                                                          timeout=timeout, before_send=gate)
                    return _payload(status, answer)
                except ConnectionError:
                    if retries <= 0:
                        raise
                    retries -= 1

    async def _get_or_none(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """One object, or None when there is none (a 404)."""
        try:
            return await self._call("GET", path, query=query)
        except NotFound:
            return None

    def _lease_request(self, method: str, path: str, body: Any = None, timeout: float = LEASE_REQUEST_TIMEOUT) -> Any:
        """Blocking, on the lease's thread. Never fenced (the Lease's calls are how the lease is won back, and its
        resourceVersion guards them), and bounded by `timeout`."""
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if body is not None else {})}
        m, url, h, b, p = self._lease_client.param_serialize(method, path, header_params=headers, body=body,
                                                            auth_settings=["BearerToken"])
        resp = self._lease_client.call_api(m, url, h, b, p, _request_timeout=timeout)
        return _payload(resp.status, resp.read())

    # ---- Secrets ----

    @staticmethod
    def _secrets(namespace: str) -> str:
        return f"/api/v1/namespaces/{quote(namespace)}/secrets"

    async def get_secret(self, namespace: str, name: str, not_older_than: str = "") -> dict[str, Any] | None:
        """`not_older_than`: a resourceVersion of it already seen (in a list, in a watch event). The API server then
        answers from its watch cache with that version or a newer one, instead of a quorum read through etcd: start-up
        reads every proven Secret, and on two shared cores the API server's CPU is the operator's too. Without it
        (after a conflict: what is there now?) the read is the latest."""
        query = {"resourceVersion": not_older_than} if not_older_than else None
        return await self._get_or_none(f"{self._secrets(namespace)}/{quote(name)}", query)

    async def list_all(self, api: str, plural: str, namespaces: tuple[str, ...] = (),
                       label_selector: str = "", field_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a resource, in pages: cluster-wide, or one list per namespace when namespaces are given.
        `api` is "/api/v1" or "/apis/<group>/<version>"."""
        paths = [f"{api}/namespaces/{quote(ns)}/{plural}" for ns in namespaces] or [f"{api}/{plural}"]
        out: list[dict[str, Any]] = []
        for path in paths:
            async for items, _version in self.pages(path, label_selector, field_selector, metadata_only=False):
                out.extend(items)
        return out

    async def pages(self, path: str, label_selector: str = "", field_selector: str = "", *,
                    metadata_only: bool = True) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """The objects under `path` a page at a time (as PartialObjectMetadata when `metadata_only`), each with the
        list's resourceVersion to watch from: a caller that keeps only what it needs of each page never holds the
        whole list. Small pages bound what one response may hold (annotations can reach 256 KiB each)."""
        token = ""
        while True:
            query = {"limit": str(PAGE), **_selectors(label_selector, field_selector),
                     **({"continue": token} if token else {})}
            accept = METADATA_LIST if metadata_only else "application/json"
            page = await self._call("GET", path, query=query, accept=accept)
            items = page.get("items") or []
            yield ([{"metadata": item.get("metadata") or {}} for item in items] if metadata_only else items,
                   page.get("metadata", {}).get("resourceVersion", ""))
            token = page.get("metadata", {}).get("continue", "")
            if not token:
                return

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
        return await self._get_or_none(self._workload(namespace, kind, name))

    async def annotate_pod_template(self, namespace: str, kind: str, name: str,
                                    annotations: Mapping[str, str]) -> dict[str, Any]:
        """A pod-template annotation change makes the workload controller roll its pods."""
        patch = {"spec": {"template": {"metadata": {"annotations": dict(annotations)}}}}
        return await self._call("PATCH", self._workload(namespace, kind, name), patch, "application/merge-patch+json")

    # ---- ServiceAccounts ----

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(name)}")

    async def get_namespace(self, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/api/v1/namespaces/{quote(name)}")

    # ---- ConfigMaps (trust bundles) ----

    async def create_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"/api/v1/namespaces/{quote(body['metadata']['namespace'])}/configmaps", body)

    async def replace_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        path = f"/api/v1/namespaces/{quote(meta['namespace'])}/configmaps/{quote(meta['name'])}"
        return await self._call("PUT", path, body)

    # ---- pod certificates: PodCertificateRequests and ClusterTrustBundles (certificates.k8s.io/v1) ----

    async def served_resources(self, group_version: str) -> set[str]:
        """The resources an API group version serves (empty when it is not served at all): Kubernetes before 1.37,
        or with the pod-certificate feature gates off, has no certificates.k8s.io/v1 PodCertificateRequests."""
        found = await self._get_or_none(f"/apis/{group_version}") or {}
        return {r.get("name", "") for r in found.get("resources") or []}

    @staticmethod
    def _pod_certificate(namespace: str, name: str) -> str:
        return f"{CERTIFICATES}/namespaces/{quote(namespace)}/podcertificaterequests/{quote(name)}"

    async def get_pod_certificate_request(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(self._pod_certificate(namespace, name))

    async def patch_pod_certificate_status(self, namespace: str, name: str, resource_version: str,
                                           status: Mapping[str, Any]) -> dict[str, Any]:
        """One merge patch of the status, conditional on the version read (a 409 if the request changed)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status)}
        return await self._call("PATCH", self._pod_certificate(namespace, name) + "/status", body,
                                "application/merge-patch+json")

    async def get_cluster_trust_bundle(self, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"{CERTIFICATES}/clustertrustbundles/{quote(name)}")

    async def create_cluster_trust_bundle(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"{CERTIFICATES}/clustertrustbundles", body)

    async def replace_cluster_trust_bundle(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PUT", f"{CERTIFICATES}/clustertrustbundles/{quote(body['metadata']['name'])}", body)

    # ---- MtlsIdentities ----

    @staticmethod
    def _identity(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}"

    async def create_identity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"]["namespace"]
        return await self._call("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}", body)

    async def get_identity(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(self._identity(namespace, name))

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

    async def get_authority(self, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/apis/{GROUP}/{VERSION}/mtlsauthorities/{quote(name)}")

    async def patch_authority_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"/apis/{GROUP}/{VERSION}/mtlsauthorities/{quote(name)}/status",
                                {"status": status}, "application/merge-patch+json")

    # ---- Leases (leader election) ----
    # Blocking on purpose: leader.py calls them from threads of its own, so a renewal never waits for the event loop
    # or queues behind Secret writes in the worker pool.

    @staticmethod
    def _leases(namespace: str) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases"

    def get_lease(self, namespace: str, name: str, timeout: float = LEASE_REQUEST_TIMEOUT) -> dict[str, Any]:
        return self._lease_request("GET", f"{self._leases(namespace)}/{quote(name)}", timeout=timeout)

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any],
                     timeout: float = LEASE_REQUEST_TIMEOUT) -> dict[str, Any]:
        return self._lease_request("POST", self._leases(namespace), {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}, timeout=timeout)

    def replace_lease(self, lease: Mapping[str, Any], timeout: float = LEASE_REQUEST_TIMEOUT) -> dict[str, Any]:
        """PUT with the resourceVersion it was read at: of two contenders, one wins."""
        meta = lease["metadata"]
        return self._lease_request("PUT", f"{self._leases(meta['namespace'])}/{quote(meta['name'])}", lease,
                                   timeout=timeout)

    # ---- Events ----

    async def post_event(self, event: Pending) -> str | None:
        """A core/v1 Event (what `kubectl describe` shows), at the lowest priority (events.py). Best effort: a lost
        Event must not fail a reconcile. Returns None once posted, else why not, for events.py to count: "stopped"
        (fenced: this replica is losing the lease, which is logged where it is noticed) or "failed" (logged here)."""
        when = event.when()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{(event.name or 'object')[:200]}.{uuid.uuid4().hex[:12]}",
                         "namespace": event.namespace},
            "involvedObject": event.involved(), "type": event.event_type, "reason": event.reason,
            "message": event.message, "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": when, "lastTimestamp": when, "count": 1,
        }
        try:
            await self._call("POST", f"/api/v1/namespaces/{quote(event.namespace)}/events", body, low=True)
        except Fenced:
            return "stopped"
        except Exception as e:  # network errors too: an Event is never worth a failed reconcile
            log.warning("could not post event %s for %s/%s: %s", event.reason, event.namespace, event.name, e)
            return "failed"
        return None

    # ---- reviews for the secure /metrics endpoint (metricsserver.py) ----

    async def _review(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Reviews are questions, not writes: nothing is stored, so they pass the fence (a standby's /metrics is
        still scraped) and, like reads, may be retried."""
        return await self._call("POST", path, body, fenced=False)

    async def create_token_review(self, token: str) -> dict[str, Any]:
        """Who a bearer token belongs to. The token is in the request body only: never logged, never in an error."""
        return await self._review("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})

    async def create_subject_access_review(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return await self._review("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": dict(spec)})

    # ---- lists and watches, on the event loop: the identities; the identity Secrets' metadata (look-alikes' data
    # never reaches us); namespaces opted in to pod certificates; PodCertificateRequests for our signer; one object by
    # name (the CA Secret, which the label-filtered Secret watch does not see; the signer's ClusterTrustBundle) ----

    def secret_paths(self, namespaces: tuple[str, ...]) -> list[str]:
        return [self._secrets(ns) for ns in namespaces] or ["/api/v1/secrets"]

    @staticmethod
    def identity_paths(namespaces: tuple[str, ...]) -> list[str]:
        api = f"/apis/{GROUP}/{VERSION}"
        return [f"{api}/namespaces/{quote(ns)}/{PLURAL}" for ns in namespaces] or [f"{api}/{PLURAL}"]

    async def list_whole(self, path: str, label_selector: str = "", field_selector: str = "",
                         metadata_only: bool = True) -> tuple[list[dict[str, Any]], str]:
        """Every object under `path` (as PartialObjectMetadata when `metadata_only`), read in pages, and the list's
        resourceVersion to watch from."""
        out: list[dict[str, Any]] = []
        version = ""
        async for items, page_version in self.pages(path, label_selector, field_selector,
                                                    metadata_only=metadata_only):
            out.extend(items)
            version = page_version
        return out, version

    async def watch(self, path: str, version: str, on_event: Callable[[str, dict[str, Any]], None],
                    on_listed: Callable[[list[dict[str, Any]]], None], *, label_selector: str = "",
                    field_selector: str = "", metadata_only: bool = True, health: WatchHealth | None = None) -> None:
        """Until cancelled: on_event(type, object) for every change under `path` from `version` on (metadata only
        unless asked), called as each event is read, on the event loop. When the version has expired (410) or the
        stream fails, lists again and hands the whole list to on_listed, so deletions missed meanwhile are noticed.
        `health`, when given, says at every moment whether the stream is up (for /readyz).

        On the loop rather than a thread per watch: a thread cost a wake-up, a hand-off (call_soon_threadsafe) and a
        pass of the GIL per event, which was a tenth of the operator's CPU per identity (bench/RESULTS.md, issue 12);
        here an event is parsed where its bytes arrive. The handlers are the loop's own code, so what one raises is
        logged and the stream goes on, as it did when each was a callback of its own."""
        health = health or WatchHealth()
        backoff = 1.0
        while True:
            try:
                if not version:
                    items, version = await self.list_whole(path, label_selector, field_selector, metadata_only)
                    _guarded(on_listed, path, items)
                    health.up()
                while version:
                    version = await self._watch_once(path, version, on_event, label_selector, field_selector,
                                                     metadata_only, health) or ""
                    # The backoff starts afresh only once a watch ran until the server ended it: a list that works
                    # and a watch that fails at once (refused, cut by a proxy) must not repeat every second.
                    backoff = 1.0 if version else backoff
            except Exception as e:  # the watch must outlive API hiccups
                health.down(str(e) or type(e).__name__)
                log.warning("watch on %s failed (%s); retrying in %.0fs", path, e, backoff)
                version = ""
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def watch_one(self, collection: str, name: str,
                        on_change: Callable[[dict[str, Any] | None], None]) -> None:
        """Until cancelled: on_change(body or None) now and on every change of the object `name` in the `collection`
        path — watch on that one name, whole."""
        def on_event(kind: str, body: dict[str, Any]) -> None:
            on_change(None if kind == "DELETED" else body)

        def on_listed(items: list[dict[str, Any]]) -> None:
            on_change(items[0] if items else None)

        await self.watch(collection, "", on_event, on_listed, field_selector=f"metadata.name={name}",
                         metadata_only=False)

    async def _watch_once(self, path: str, version: str, on_event: Callable[[str, dict[str, Any]], None],
                          label_selector: str, field_selector: str, metadata_only: bool,
                          health: WatchHealth) -> str | None:
        """One watch request: the version to go on from when the server ended it, None when it must list again."""
        query = {**_selectors(label_selector, field_selector), "watch": "true", "resourceVersion": version,
                 "timeoutSeconds": str(WATCH_SECONDS), "allowWatchBookmarks": "true"}
        client, _slots = self._session.open()
        lines = _EventLines(path, version, on_event, metadata_only)
        headers = self._session.headers({"Accept": METADATA_ONE if metadata_only else "application/json"})
        try:
            status, answer = await client.stream("GET", f"{path}?{urlencode(query)}", headers, lines.feed,
                                                 on_status=lambda code: health.up() if code < 400 else None,
                                                 connect_timeout=10, idle_timeout=WATCH_SECONDS + 40)
        except _Expired:
            return None
        if status == 410:  # the version is gone: list again, at once
            return None
        if status >= 400:
            _payload(status, answer)  # raises the ApiError it stands for: listed again after the backoff
        return lines.version


class _Expired(Exception):
    """The watch's version is gone (an ERROR event with code 410): list again, at once."""


class _EventLines:
    """A watch answer's bytes, cut into events (one JSON object per line) as they arrive: each handed to on_event,
    the version to resume from kept."""

    def __init__(self, path: str, version: str, on_event: Callable[[str, dict[str, Any]], None],
                 metadata_only: bool) -> None:
        self.path, self.version, self._on_event, self._metadata_only = path, version, on_event, metadata_only
        self._pieces: list[bytes] = []  # of a line not yet whole

    def feed(self, data: bytes) -> None:
        # A large object's event comes in many pieces: they are joined once its line is whole, not at every piece.
        if b"\n" not in data:
            self._pieces.append(data)
            return
        if self._pieces:
            self._pieces.append(data)
            data, self._pieces = b"".join(self._pieces), []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line, start = data[start:end], end + 1
            if line.strip():
                self._event(orjson.loads(line))
        if start < len(data):
            self._pieces.append(data[start:])

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            # Any other error the server ends a watch with: listed again after the backoff.
            raise ApiError(obj.get("code") or 0, obj.get("reason", ""), obj.get("message", "watch ERROR event"))
        self.version = obj.get("metadata", {}).get("resourceVersion", self.version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            _guarded(self._on_event, self.path, kind, {"metadata": obj.get("metadata") or {}}
                     if self._metadata_only else obj)


def _guarded(handler: Callable[..., None], path: str, *args: Any) -> None:
    """A handler's failure is its bug, logged; the stream that fed it goes on."""
    try:
        handler(*args)
    except Exception:
        log.exception("handling a change under %s failed", path)


class WatchHealth:
    """Whether one of our list-and-watch streams is up, and why not: written by its watch, read by /readyz. A stream
    starts up (its first list was just read by start-up); a failed list or watch request takes it down until one
    succeeds again."""

    def __init__(self) -> None:
        self.problem: str | None = None  # None: up

    def up(self) -> None:
        self.problem = None

    def down(self, problem: str) -> None:
        self.problem = problem


def _payload(status: int, data: bytes) -> Any:
    """The decoded body of an answer, or the ApiError it stands for."""
    try:
        payload = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:  # not JSON: a proxy's error page, say
        if status < 400:
            raise
        payload = {}
    if status >= 400:
        reason, message = payload.get("reason", ""), payload.get("message", data[:200].decode(errors="replace"))
        cls = NotFound if status == 404 else Conflict if status == 409 else ApiError
        raise cls(status, reason, message)
    return payload


def _selectors(label_selector: str, field_selector: str) -> dict[str, str]:
    return {**({"labelSelector": label_selector} if label_selector else {}),
            **({"fieldSelector": field_selector} if field_selector else {})}
