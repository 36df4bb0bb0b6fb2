"""Trust-bundle ConfigMaps: the CA bundle, published in every namespace that holds identities (and any namespaces
named with --bundle-namespace), for workloads that verify peers but hold no identity of their own, or mount the bundle
apart from their key. Kept current: a changed bundle (a root rotation publishes old + new) is written to each one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from . import tlssecret
from .kube import ApiError, Conflict, Kube

log = logging.getLogger(__name__)
KEY = "ca.crt"


class TrustBundles:
    """What it needs, and no more: the API, the CA bundle in force, the namespaces holding identities, and a way to run
    background work that shutdown cancels."""

    def __init__(self, kube: Kube, name: str, extra_namespaces: Iterable[str], bundle: Callable[[], bytes | None],
                 identity_namespaces: Callable[[], Iterable[str]],
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.kube, self._bundle_pem, self._identity_namespaces, self._spawn = kube, bundle, identity_namespaces, spawn
        self.name = name
        self.extra = frozenset(extra_namespaces)
        self.maps: dict[str, dict[str, Any]] = {}  # namespace -> our ConfigMap as last seen
        self._locks: dict[str, asyncio.Lock] = {}
        self.foreign: set[str] = set()  # namespaces where a ConfigMap of that name is someone else's: left alone

    def event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("name") != self.name:
            return
        if event_type == "DELETED":
            self.maps.pop(meta["namespace"], None)
        else:
            self.maps[meta["namespace"]] = body
            self.foreign.discard(meta["namespace"])
        self._spawn(self.ensure(meta["namespace"]))

    def namespaces(self) -> set[str]:
        return set(self._identity_namespaces()) | set(self.extra)

    def stale(self) -> int:
        """How many namespaces do not show the current bundle yet (a root rotation waits for them)."""
        bundle = self._bundle()
        return sum(1 for ns in self.namespaces() - self.foreign
                   if (self.maps.get(ns, {}).get("data") or {}).get(KEY) != bundle)

    def _bundle(self) -> str | None:
        pem = self._bundle_pem()
        return pem.decode() if pem is not None else None

    def ensure_all(self) -> None:
        for namespace in self.namespaces():
            self._spawn(self.ensure(namespace))

    async def ensure(self, namespace: str) -> None:
        bundle = self._bundle()
        if bundle is None or namespace not in self.namespaces():
            return
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            current = self.maps.get(namespace)
            if current is not None and (current.get("data") or {}).get(KEY) == bundle:
                return
            body = {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": namespace,
                             "labels": {tlssecret.MANAGED_BY: tlssecret.MANAGED_BY_VALUE}},
                "data": {KEY: bundle},
            }
            try:
                if current is None:
                    written = await self.kube.create_configmap(body)
                else:
                    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    written = await self.kube.replace_configmap(body)
            except Conflict:
                if current is None:  # exists without our label: someone else's, left alone (and not waited for)
                    self.foreign.add(namespace)
                    log.warning("ConfigMap %s/%s exists and is not ours: no trust bundle published there",
                                namespace, self.name)
                return  # otherwise it changed meanwhile, and the watch brings the new version
            except ApiError as e:
                log.warning("could not write trust bundle %s/%s: %s", namespace, self.name, e)
                return
            self.maps[namespace] = written
