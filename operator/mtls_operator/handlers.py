"""kopf wiring, and nothing else: which streams to watch, how kopf is configured, and which Reconciler method each
event calls. Decisions live in plan.py, effects in reconciler.py.

Only raw watch-event handlers are used (`on.event`): kopf stores nothing on the objects for them — no finalizers, no
progress annotations, no status fields — so the operator's writes per issuance are exactly its own. The two streams
that carry most events, the MtlsIdentities and their Secrets, are watched by the reconciler itself (started here, at
the end of start-up): an event there goes straight to the reconciler, with none of kopf's per-event work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf

from . import tlssecret
from .config import Settings
from .kube import NotFound
from .podsigner import PodSigner
from .policy import POLICY_PLURAL
from .reconciler import Reconciler
from .spec import GROUP, VERSION

log = logging.getLogger(__name__)


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    # The same credentials as kube.py's client: in-cluster service account, else KUBECONFIG.
    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, memo.settings)
        kube = memo.kube
        reconciler = Reconciler(memo.settings, kube)
        memo.reconciler = reconciler
        # Pre-fill the Secret cache before any identity event is handled, so a restarted operator finds what it issued
        # instead of trying to create it again.
        # The same for the inputs of the admission checks, so nothing is denied for want of a look.
        # Ownership is proven against the identities (ownership.py), so they come first; of the labelled Secrets only
        # metadata is listed, and only those proven ours are read in full — but not one its identity's status records at
        # the version listed, unchanged since written: its metadata is kept instead (plan.standing).
        # Lists are read a page at a time, keeping only what the caches hold (a restart of 10,000 identities never
        # holds the whole lists at once), and the version each list was read at, for its watch to start from.
        namespaces = memo.settings.namespaces
        loop = asyncio.get_running_loop()
        began = loop.time()
        identity_versions: dict[str, str] = {}
        for path in kube.identity_paths(namespaces):
            async for items, version in kube.pages(path, metadata_only=False):
                for body in items:
                    reconciler.identities.put((body["metadata"]["namespace"], body["metadata"]["name"]), body)
                identity_versions[path] = version
        listed = loop.time()
        secret_versions: dict[str, str] = {}

        async def proven_pages() -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
            for path in kube.secret_paths(namespaces):
                async for items, version in kube.pages(path, tlssecret.MANAGED_SELECTOR):
                    secret_versions[path] = version
                    yield reconciler.proven_secrets(items)

        await reconciler.prefill_secrets(proven_pages())
        prefilled = loop.time()
        if memo.settings.bundle_configmap:
            for body in await kube.list_all("/api/v1", "configmaps", namespaces, tlssecret.MANAGED_SELECTOR,
                                            bundle_selector(memo.settings)):
                reconciler.bundles.maps[body["metadata"]["namespace"]] = body
        for body in await kube.list_all("/api/v1", "serviceaccounts", namespaces):
            reconciler.service_account_event("ADDED", body, startup=True)
        try:
            for body in await kube.list_all(f"/apis/{GROUP}/{VERSION}", POLICY_PLURAL):
                reconciler.policy_event("ADDED", body, startup=True)
        except NotFound:
            log.warning("the MtlsIdentityPolicy CRD is not installed: only the default policy applies")
        if memo.settings.pod_signer:
            # The second front on the same issuer: PodCertificateRequests for our signer, and its ClusterTrustBundle.
            # Started before the CA is loaded, so that no rotation step is taken before its records can be read.
            memo.pod_signer = PodSigner(memo.settings, kube, reconciler.issuer, reconciler.spawn,
                                        reconciler.post_event)
            reconciler.cluster_bundle = memo.pod_signer.trust_bundle
            try:
                await memo.pod_signer.start()
            except Exception:  # the Secret-based identities must not depend on the second front
                log.exception("the pod-certificate signer could not start; it stays idle")
        try:
            await reconciler.bootstrap_ca()
        except BaseException:  # kopf tries the whole start-up again: this attempt's signer and workers must not live on
            if getattr(memo, "pod_signer", None):
                memo.pod_signer.stop()
            reconciler.stop()
            raise
        reconciler.start_ca_watch()
        # Every identity listed was triggered by the CA's first load (ca_changed), so the watches only carry changes.
        for path, version in secret_versions.items():
            reconciler.start_secret_watch(path, version)
        for path, version in identity_versions.items():
            reconciler.start_identity_watch(path, version)
        memo.scheduler_task = asyncio.create_task(reconciler.scheduler.run(), name="renewal-scheduler")
        # Where a slow start-up went, for whoever waits on it: the lists, then the Secrets' reads, then the rest.
        log.info("mtls-operator started in %.1f s: %d identities listed in %.1f s, managed Secrets in %.1f s (%d read, "
                 "%d unchanged since written, known by their metadata); CA %s", loop.time() - began,
                 len(reconciler.identities), listed - began, prefilled - listed, len(reconciler.secrets),
                 len(reconciler.unread), "ready" if reconciler.ca else "UNAVAILABLE")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        # Our long-running tasks end here, and kopf's waiter on our stop flag with them: kopf would otherwise wait
        # 5 s for them as "hung" before exiting.
        task = getattr(memo, "scheduler_task", None)
        if task:
            task.cancel()
        if getattr(memo, "stop", None):
            memo.stop.set()
        if getattr(memo, "pod_signer", None):
            memo.pod_signer.stop()
        if getattr(memo, "reconciler", None):
            memo.reconciler.stop()

    if settings.bundle_configmap:
        @kopf.on.event("v1", "configmaps", registry=registry)
        async def configmap_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
            memo.reconciler.bundles.event(event["type"], event["object"])

    @kopf.on.event("v1", "serviceaccounts", registry=registry)
    async def service_account_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.reconciler.service_account_event(event["type"], event["object"])

    @kopf.on.event(GROUP, VERSION, POLICY_PLURAL, registry=registry)
    async def policy_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.reconciler.policy_event(event["type"], event["object"])

    return registry


class _NoDiffBase(kopf.DiffBaseStorage):
    """Event handlers never read kopf's old/new/diff of an object; without this, kopf deep-copies every object on
    every watch event to compute them (a tenth of the operator's CPU at a thousand identities)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> None:  # type: ignore[override]
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        pass


def bundle_selector(settings: Settings) -> str:
    """Only the trust-bundle ConfigMap's name is watched, server-side: a tenant can copy the label onto any number of
    large ConfigMaps, but at most one per namespace can carry this name (bad input 103, docs/security.md)."""
    return f"metadata.name={settings.bundle_configmap}"


def configure(settings: kopf.OperatorSettings, ours: Settings) -> None:
    # Our own Events only: kopf would otherwise post one per handler run.
    settings.posting.enabled = False
    settings.watching.label_selectors["v1", "configmaps"] = tlssecret.MANAGED_SELECTOR
    if ours.bundle_configmap:
        settings.watching.field_selectors["v1", "configmaps"] = bundle_selector(ours)
    # Serve the resources that exist at start; no list/watch of CRDs and namespaces is needed (least privilege).
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = _NoDiffBase()
    # kopf keeps a worker task per object until it has been idle this long (5 s by default). Our handlers only hand
    # the event to the reconciler, so a lingering worker saves nothing, while at start-up every object's worker is
    # alive at once, each with its queue and its last event's whole body.
    settings.queueing.idle_timeout = 0.5
    # The initial lists in pages, not one response of every ServiceAccount in the cluster.
    settings.watching.chunk_size = 500
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
