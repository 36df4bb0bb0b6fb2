"""Ownership by proof (ownership.py) and a rotation a tenant cannot hold (rotation.track_wait, rotator.progress): the
reconciler and rotator driven directly, with a fake API that records what it is asked."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mtls_operator import metrics, ownership, rotation, tlssecret
from mtls_operator.kube import ApiError, NotFound
from mtls_operator.reconciler import Reconciler
from mtls_operator.tlssecret import b64

from .conftest import NOW, UID

OTHER_UID = "99999999-2222-3333-4444-555555555555"


class FakeKube:
    """Records reads (and the version each asked for) and Events; serves the Secrets it was given."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.secrets = secrets or {}
        self.reads: list[tuple[str, str]] = []
        self.versions: list[str] = []
        self.events: list[tuple[str, str, str]] = []

    async def get_secret(self, namespace: str, name: str, not_older_than: str = "") -> dict[str, Any] | None:
        self.reads.append((namespace, name))
        self.versions.append(not_older_than)
        return self.secrets.get((namespace, name))

    async def post_event(self, event: Any) -> str | None:
        self.events.append((event.event_type, event.reason, event.message))
        return None

    async def patch_authority_status(self, name: str, status: Any) -> dict[str, Any]:
        return {}


def identity(name: str, uid: str = UID, secret_name: str | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "shop", "name": name, "uid": uid, "generation": 1, "resourceVersion": "1"},
            "spec": {"secretName": secret_name} if secret_name else {}}


def secret(name: str, owner: str, uid: str = UID, data: dict[str, str] | None = None, rv: str = "5") -> dict[str, Any]:
    return {"metadata": {"namespace": "shop", "name": name, "uid": f"s-{name}", "resourceVersion": rv,
                         "labels": {"app.kubernetes.io/managed-by": "mtls-operator"},
                         "ownerReferences": [{"apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity",
                                              "name": owner, "uid": uid, "controller": True}]},
            "data": data or {}}


def metadata_only(body: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": body["metadata"]}


async def drain(r: Reconciler) -> None:
    while r._tasks:
        await asyncio.gather(*list(r._tasks), return_exceptions=True)


def test_proof_needs_the_identitys_uid_and_the_name_its_spec_gives(settings) -> None:
    ident = identity("api")
    assert ownership.proves(secret("api-mtls", "api"), ident, "api-mtls")
    assert not ownership.proves(secret("lookalike-1", "api"), ident, "api-mtls")  # right uid, another name
    assert not ownership.proves(secret("api-mtls", "api", OTHER_UID), ident, "api-mtls")  # a deleted namesake's
    assert not ownership.proves(secret("api-mtls", "api"), None, "api-mtls")  # no such identity
    assert not ownership.proves(secret("api-mtls", "api"), ident, None)  # an invalid spec owns nothing
    unowned = secret("api-mtls", "api")
    unowned["metadata"]["ownerReferences"][0]["controller"] = False
    assert not ownership.proves(unowned, ident, "api-mtls")


def test_lookalike_secrets_are_neither_read_nor_cached(settings) -> None:
    """Bad input 100: a tenant's labelled Secrets owned by its own identity. Before: each was cached whole."""
    big = base64.b64encode(b"x" * 100_000).decode()
    own = secret("api-mtls", "api", data={"tls.crt": "Y3J0", "tls.key": "a2V5", "ca.crt": "Y2E=", "junk": big})

    async def run() -> tuple[Reconciler, FakeKube, list]:
        kube = FakeKube({("shop", "api-mtls"): own})
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        triggered: list = []
        r.trigger = lambda key, urgent=False: triggered.append(key)  # type: ignore[method-assign]
        r.identities.put(("shop", "api"), identity("api"))
        for i in range(20):
            r.secret_event("ADDED", secret(f"lookalike-{i}", "api", data={"tls.crt": big}))
        r.secret_event("ADDED", secret("api-mtls", "api", OTHER_UID, data={"tls.crt": big}))
        await drain(r)
        assert len(r.secrets) == 0 and kube.reads == []
        # The one Secret the identity names: read by name, kept without what the operator never reads.
        r.secret_event("ADDED", metadata_only(own))
        await drain(r)
        return r, kube, triggered

    r, kube, triggered = asyncio.run(run())
    assert kube.reads == [("shop", "api-mtls")]
    assert kube.versions == ["5"]  # the version its event showed, or newer: the API server's cache may answer
    assert list(r.secrets) == [("shop", "api-mtls")]
    assert set(r.secrets.get(("shop", "api-mtls"))["data"]) == set(ownership.DATA_KEYS)
    assert triggered == [("shop", "api")]


def test_a_secret_that_stops_being_proven_is_forgotten(settings) -> None:
    own = secret("api-mtls", "api", data={"tls.crt": "Y3J0"})

    async def run() -> Reconciler:
        kube = FakeKube({("shop", "api-mtls"): own})
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        r.trigger = lambda key, urgent=False: None  # type: ignore[method-assign]
        r.identities.put(("shop", "api"), identity("api"))
        async def pages() -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
            yield r.proven_secrets([metadata_only(own), metadata_only(secret("lookalike", "api"))])
            yield []

        await r.prefill_secrets(pages())
        assert list(r.secrets) == [("shop", "api-mtls")]
        assert kube.versions == ["5"]  # read at the version listed, or newer
        retargeted = secret("api-mtls", "api", OTHER_UID, rv="6")  # its reference now names someone else
        r.secret_event("MODIFIED", metadata_only(retargeted))
        return r

    assert len(asyncio.run(run()).secrets) == 0


def test_churn_does_not_restart_the_stall_timer() -> None:
    stall = dt.timedelta(hours=1)
    wait = rotation.track_wait(None, rotation.Phase.REISSUING, 3, NOW)
    for minutes, count in ((10, 8), (20, 3), (30, 9), (40, 3), (50, 5)):
        wait = rotation.track_wait(wait, rotation.Phase.REISSUING, count, NOW + dt.timedelta(minutes=minutes))
    assert wait.progressed_at == NOW  # risen and fallen back: no progress
    wait = rotation.track_wait(wait, rotation.Phase.REISSUING, 2, NOW + dt.timedelta(minutes=55))
    assert wait.progressed_at == NOW + dt.timedelta(minutes=55)  # a straggler moved on: progress
    assert rotation.track_wait(wait, rotation.Phase.RETIRING, 2, NOW + stall).progressed_at == NOW + stall


def test_a_tenant_churning_its_secret_cannot_hold_the_rotation_and_the_wait_is_reported(settings, root) -> None:
    """Bad input 101: a tenant edits its own identity's Secret back and forth (the operator heals it each time), so
    the count of Secrets a phase waits for keeps changing. Before: every change restarted the --ca-stall timer."""
    settings = dataclasses.replace(settings, ca_stall=dt.timedelta(hours=1), bundle_configmap="")
    current, old = b64(root.bundle_pem), b64(b"an old bundle")
    clock = [NOW]

    async def run() -> tuple[Reconciler, list[bool], FakeKube]:
        kube = FakeKube()
        r = Reconciler(settings, kube, clock=lambda: clock[0])  # type: ignore[arg-type]
        r.trigger = lambda key, urgent=False: None  # type: ignore[method-assign]
        r.ca, r.ca_secret = root, {"metadata": {"namespace": "mtls-operator", "name": "mtls-operator-ca"}}
        for name in ("stuck", "churn"):
            r.identities.put(("shop", name), identity(name, uid=f"u-{name}"))
        r.secrets.put(("shop", "stuck-mtls"), secret("stuck-mtls", "stuck", "u-stuck", {"ca.crt": old}))
        # A look-alike slipped into the cache anyway is not counted either: the proof is checked again.
        r.secrets.put(("shop", "lookalike"), secret("lookalike", "churn", "u-churn", {"ca.crt": old}))
        stalled = []
        for minutes, churn in ((0, current), (20, old), (25, current), (40, old), (45, current), (61, current)):
            clock[0] = NOW + dt.timedelta(minutes=minutes)
            r.secrets.put(("shop", "churn-mtls"), secret("churn-mtls", "churn", "u-churn", {"ca.crt": churn},
                                                         rv=str(10 + minutes)))
            stalled.append(r.rotator.progress(root, rotation.Phase.PROPAGATING, clock[0]).stalled)
            if minutes == 20:
                assert "shop/stuck-mtls" in r.rotator.waiting and "shop/churn-mtls" in r.rotator.waiting
        await drain(r)
        return r, stalled, kube

    r, stalled, kube = asyncio.run(run())
    assert stalled == [False] * 5 + [True]
    warnings = [e for e in kube.events if e[1] == "RotationWaiting"]
    assert len(warnings) == 1 and warnings[0][0] == "Warning" and "shop/stuck-mtls" in warnings[0][2]
    assert "lookalike" not in r.rotator.waiting
    assert metrics.ca_rotation_waiting.labels("bundle")._value.get() == 1
    waiting = next(c for c in r.authority.desired()["conditions"] if c["type"] == "RotationWaiting")
    assert waiting["status"] == "True" and "shop/stuck-mtls" in waiting["message"]


class FailingKube(FakeKube):
    """Its reads fail: the network (an error a reconcile recovers from) or something unforeseen."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def get_secret(self, namespace: str, name: str, not_older_than: str = "") -> dict[str, Any] | None:
        self.reads.append((namespace, name))
        raise self.error


def _keys(n: int) -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
    async def pages() -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
        for page in range(n):
            yield [(("shop", f"s{page}-{i}"), "7") for i in range(100)]
    return pages()


def test_prefill_reads_past_network_errors_and_never_hangs_on_a_failing_reader(settings) -> None:
    """A read lost to the network is left to the reconcile (it reads the Secret when its write conflicts); anything
    else ends the prefill with the error, so that start-up is tried again — the listing must never wait forever on
    readers that died."""
    async def run(kube: FakeKube) -> None:
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        await asyncio.wait_for(r.prefill_secrets(_keys(20)), timeout=60)  # a guard against a hang, not a clock

    lossy = FailingKube(ConnectionResetError("reset"))
    asyncio.run(run(lossy))
    assert len(lossy.reads) == 2000
    broken = FailingKube(RuntimeError("unforeseen"))
    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(run(broken))
    assert caught.group_contains(RuntimeError)


class LaggingCache(FakeKube):
    """Its watch cache is behind: a read at a version fails (a 504 after the server's wait); the latest read serves."""

    async def get_secret(self, namespace: str, name: str, not_older_than: str = "") -> dict[str, Any] | None:
        if not_older_than:
            self.reads.append((namespace, name))
            self.versions.append(not_older_than)
            raise ApiError(504, "Timeout", "Too large resource version")
        return await super().get_secret(namespace, name)


def test_a_read_the_cache_cannot_serve_yet_is_made_again_for_the_latest(settings) -> None:
    own = secret("api-mtls", "api", data={"tls.crt": "Y3J0"})

    async def run() -> tuple[Reconciler, FakeKube]:
        kube = LaggingCache({("shop", "api-mtls"): own})
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        r.trigger = lambda key, urgent=False: None  # type: ignore[method-assign]
        r.identities.put(("shop", "api"), identity("api"))
        r.secret_event("MODIFIED", metadata_only(own))
        await drain(r)
        return r, kube

    r, kube = asyncio.run(run())
    assert kube.versions == ["5", ""]  # at the event's version, then the latest
    assert list(r.secrets) == [("shop", "api-mtls")]


def test_a_secret_gone_at_that_version_is_not_read_again(settings) -> None:
    async def run() -> FakeKube:
        kube = FailingKube(NotFound(404, "NotFound", "gone"))
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        r.trigger = lambda key, urgent=False: None  # type: ignore[method-assign]
        r.identities.put(("shop", "api"), identity("api"))
        r.secret_event("MODIFIED", metadata_only(secret("api-mtls", "api")))
        await drain(r)
        return kube

    assert asyncio.run(run()).reads == [("shop", "api-mtls")]


def test_a_secret_that_breaks_the_start_up_parse_fails_neither_start_up_nor_its_caching(settings, monkeypatch) -> None:
    """Tenants write these Secrets: a parse that raises at start-up (tlssecret.read never should) is left to that
    identity's reconcile, which parses again inside its own error handling."""
    own = secret("api-mtls", "api", data={"tls.crt": "Y3J0"})

    def broken(body: Any, uid: str) -> Any:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(tlssecret, "read", broken)

    async def run() -> Reconciler:
        r = Reconciler(settings, FakeKube({("shop", "api-mtls"): own}))  # type: ignore[arg-type]
        r.identities.put(("shop", "api"), identity("api"))

        async def pages() -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
            yield r.proven_secrets([metadata_only(own)])

        await asyncio.wait_for(r.prefill_secrets(pages()), timeout=60)  # a guard against a hang, not a clock
        return r

    assert list(asyncio.run(run()).secrets) == [("shop", "api-mtls")]


def test_start_up_parses_each_proven_secret_as_it_is_read(settings, monkeypatch) -> None:
    own = secret("api-mtls", "api", data={"tls.crt": "Y3J0"})
    parsed: list[str] = []
    real = tlssecret.read
    monkeypatch.setattr(tlssecret, "read", lambda body, uid: parsed.append(uid) or real(body, uid))

    async def run() -> None:
        r = Reconciler(settings, FakeKube({("shop", "api-mtls"): own}))  # type: ignore[arg-type]
        r.identities.put(("shop", "api"), identity("api"))

        async def pages() -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
            yield r.proven_secrets([metadata_only(own), metadata_only(secret("lookalike", "api"))])

        await r.prefill_secrets(pages())
        assert parsed == [UID]
        r._view(("shop", "api-mtls"), r.secrets.get(("shop", "api-mtls")), UID)  # what the reconcile asks for
        assert parsed == [UID]  # found parsed: the same resourceVersion

    asyncio.run(run())


def _recorded(name: str, version: str = "5", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An identity whose status records its Secret at `version` (the operator wrote it there)."""
    body = identity(name)
    body["metadata"]["annotations"] = annotations or {}
    body["status"] = {"secretResourceVersion": version}
    return body


def test_a_secret_at_the_version_its_status_records_is_known_by_metadata_until_it_changes(settings) -> None:
    own = secret("api-mtls", "api", data={"tls.crt": "Y3J0"})
    changed = secret("api-mtls", "api", data={"tls.crt": "b3RoZXI="}, rv="6")

    async def run() -> None:
        kube = FakeKube({("shop", "api-mtls"): own})
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        triggered: list = []
        r.trigger = lambda key, urgent=False: triggered.append(key)  # type: ignore[method-assign]
        r.identities.put(("shop", "api"), _recorded("api"))
        r.identities.put(("shop", "web"), identity("web"))  # written before the status recorded versions

        async def pages() -> AsyncIterator[list[tuple[tuple[str, str], str]]]:
            yield r.proven_secrets([metadata_only(own), metadata_only(secret("web-mtls", "web"))])

        await r.prefill_secrets(pages())
        assert kube.reads == [("shop", "web-mtls")]  # only the one no status vouches for
        assert list(r.unread) == [("shop", "api-mtls")] and r.as_written(r.unread[("shop", "api-mtls")])
        assert ("shop", "api-mtls") not in list(r.secrets)

        r.secret_event("ADDED", metadata_only(own))  # a relist or a late event at the same version: nothing new
        await drain(r)
        assert kube.reads == [("shop", "web-mtls")] and triggered == []

        # Changed: known by its newer metadata (never as written) until the read lands, then cached in full.
        kube.secrets[("shop", "api-mtls")] = changed
        r.secret_event("MODIFIED", metadata_only(changed))
        assert not r.as_written(r.unread[("shop", "api-mtls")])
        await drain(r)
        assert kube.reads[-1] == ("shop", "api-mtls") and kube.versions[-1] == "6"
        assert not r.unread and r.secrets.get(("shop", "api-mtls"))["data"]["tls.crt"] == "b3RoZXI="
        assert triggered == [("shop", "api")]

    asyncio.run(run())


def test_a_known_secret_is_forgotten_only_by_its_own_deletion(settings) -> None:
    own = secret("api-mtls", "api")

    async def run() -> None:
        r = Reconciler(settings, FakeKube())  # type: ignore[arg-type]
        triggered: list = []
        r.trigger = lambda key, urgent=False: triggered.append(key)  # type: ignore[method-assign]
        r.identities.put(("shop", "api"), _recorded("api"))
        r.proven_secrets([metadata_only(own)])
        earlier = metadata_only(own)
        earlier["metadata"] = {**earlier["metadata"], "uid": "s-an-older-namesake"}
        r.secret_event("DELETED", earlier)  # a late deletion of a namesake before it
        assert list(r.unread) == [("shop", "api-mtls")] and triggered == []
        r.secret_event("DELETED", metadata_only(own))
        assert not r.unread and triggered == [("shop", "api")]

    asyncio.run(run())


def test_a_failed_read_keeps_what_the_metadata_showed_and_the_reconcile_signs_nothing(settings, root) -> None:
    """A Secret known by metadata whose identity asks for more (here a renew request) is read before deciding: when
    that read fails, the reconcile fails (and is retried with backoff) rather than take the Secret for missing."""
    own = secret("api-mtls", "api")

    async def run() -> None:
        kube = FailingKube(ConnectionResetError("reset"))
        r = Reconciler(settings, kube)  # type: ignore[arg-type]
        r.trigger = lambda key, urgent=False: None  # type: ignore[method-assign]
        r.ca = root
        r.service_accounts.add(("shop", "api"))
        body = _recorded("api", annotations={tlssecret.ANN_RENEW_REQUEST: "now"})
        r.identities.put(("shop", "api"), body)
        r.proven_secrets([metadata_only(own)])
        await r._fetch_secret(("shop", "api-mtls"), ("shop", "api"), "5")  # a watch-driven read, lost
        assert list(r.unread) == [("shop", "api-mtls")]
        with pytest.raises(ConnectionResetError):
            await r._reconcile(("shop", "api"), r.identities.get(("shop", "api")))
        assert list(r.unread) == [("shop", "api-mtls")] and len(r.secrets) == 0
        assert kube.reads == [("shop", "api-mtls")] * 2

    asyncio.run(run())


def test_the_rotation_counts_secrets_known_by_metadata_by_their_digests(settings, root) -> None:
    """Not read since start-up, they still hold a rotation until their digests show the CA's bundle and issuer; one
    changed since it was written counts as behind on both until it is read."""
    r = Reconciler(settings, FakeKube())  # type: ignore[arg-type]
    current = {tlssecret.ANN_BUNDLE: root.bundle_digest, tlssecret.ANN_ISSUER: root.fingerprint}
    for name, written in (("fresh", current), ("stale", {**current, tlssecret.ANN_BUNDLE: "0" * 32}),
                          ("old", {**current, tlssecret.ANN_ISSUER: "f" * 64})):
        r.identities.put(("shop", name), _recorded(name))
        body = secret(f"{name}-mtls", name)
        body["metadata"]["annotations"] = written
        r.proven_secrets([metadata_only(body)])
    assert r.rotator._count(root) == (["shop/stale-mtls"], ["shop/old-mtls"], 0)
    moved = secret("fresh-mtls", "fresh", rv="6")
    moved["metadata"]["annotations"] = current  # edited: the annotations no longer vouch for the data
    r.unread[("shop", "fresh-mtls")] = metadata_only(moved)
    stale, old, _ = r.rotator._count(root)
    assert "shop/fresh-mtls" in stale and "shop/fresh-mtls" in old
