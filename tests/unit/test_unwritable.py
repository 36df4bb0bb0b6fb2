"""Unwritable identity Secrets (immutable, or a write refused by admission): a distinct reason, no signing for a write
that must fail, the same key on every retry, a growing backoff, and no place in rotation waits."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

from mtls_operator import plan, status, tlssecret
from mtls_operator.config import Settings
from mtls_operator.kube import ApiError
from mtls_operator.plan import Action, Reason
from mtls_operator.reconciler import Reconciler

from .conftest import NOW, UID, issue_view


def test_a_due_renewal_into_an_immutable_secret_is_unwritable_not_issued(identity, root) -> None:
    view = dataclasses.replace(issue_view(identity, root), immutable=True)
    due = NOW + identity.duration  # long past the renewal time
    d = plan.decide(identity, view, root, due)
    assert (d.action, d.reason) == (Action.UNWRITABLE, Reason.SECRET_UNWRITABLE)
    assert "immutable" in d.message and "Expired" in d.message


def test_an_immutable_secret_that_needs_nothing_is_fine(identity, root) -> None:
    view = dataclasses.replace(issue_view(identity, root), immutable=True)
    assert plan.decide(identity, view, root, NOW + dt.timedelta(minutes=1)).action is Action.NONE


def test_immutable_is_read_from_the_secret(identity, root) -> None:
    view = issue_view(identity, root)
    assert not view.immutable
    body = {"immutable": True, "metadata": {"ownerReferences": [{
        "apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity", "name": "api", "uid": UID,
        "controller": True}]}, "data": {}}
    assert tlssecret.read(body, UID).immutable


class RefusingKube:
    """Refuses every Secret write the way a ValidatingAdmissionPolicy does (422 Invalid); records what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []

    async def create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(body)
        raise ApiError(422, "Invalid", "ValidatingAdmissionPolicy 'freeze' denied request: frozen")

    replace_secret = create_secret

    async def patch_identity_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(patch)
        return {"metadata": {"namespace": namespace, "name": name, "uid": UID, "generation": 1}, "status": patch}

    async def post_event(self, *args: Any) -> str | None:
        return None


def test_a_refused_write_is_reported_backed_off_and_retried_with_the_same_key(identity, root) -> None:
    async def run() -> None:
        kube = RefusingKube()
        r = Reconciler(Settings(min_duration=dt.timedelta(seconds=10)), kube, clock=lambda: NOW)  # type: ignore[arg-type]
        r.ca = root
        key = (identity.namespace, identity.name)
        body = {"metadata": {"namespace": key[0], "name": key[1], "uid": UID, "generation": 1}, "spec": {}}
        r.identities.put(key, body)
        waits = []
        for _ in range(3):
            await r._act(key, body, identity, tlssecret.ABSENT)
            waits.append((r.scheduler._due[key][0] - NOW).total_seconds())
        await asyncio.gather(*list(r._tasks), return_exceptions=True)
        keys = {tlssecret.decode_field(b["data"], "tls.key") for b in kube.sent}
        assert len(kube.sent) == 3 and len(keys) == 1, "a refused write must not cost a new key per retry"
        cond = kube.statuses[-1]["conditions"][0]
        assert cond["reason"] == status.Ready.SECRET_UNWRITABLE
        assert "refused" in cond["message"] and "delete the Secret" in cond["message"]
        assert not r.servable(key)  # left out of rotation waits
        assert waits[0] >= 10 and waits[1] == 2 * waits[0] and waits[2] == 2 * waits[1], waits  # backs off
    asyncio.run(run())


class SchemaRefusingKube(RefusingKube):
    """Refuses every status write, as the API server does for an object stored before the CRD's schema tightened."""

    async def patch_identity_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(patch)
        raise ApiError(422, "Invalid", "spec.duration: Invalid value")


def test_a_status_the_api_server_refused_is_not_tried_again_for_the_same_spec() -> None:
    """Whatever brings the object back (a CA change, a bundle event, a resync), the API server will refuse the same
    write: one attempt per spec generation, so a tenant's stale objects cost nothing after the first look."""
    async def run() -> None:
        kube = SchemaRefusingKube()
        r = Reconciler(Settings(), kube, clock=lambda: NOW)  # type: ignore[arg-type]
        body = {"metadata": {"namespace": "shop", "name": "old", "uid": UID, "generation": 1}, "spec": {}}
        for _ in range(3):
            await r._report_failure(body, status.Ready.INVALID_SPEC, "spec.duration 'forever' is not a duration")
        assert len(kube.statuses) == 1
        newer = {**body, "metadata": {**body["metadata"], "generation": 2}}
        await r._report_failure(newer, status.Ready.INVALID_SPEC, "still not a duration")
        assert len(kube.statuses) == 2
        # Deleted (unseen) and created again under the same name: another object, looked at afresh.
        recreated = {**body, "metadata": {**body["metadata"], "uid": "another-uid"}}
        await r._report_failure(recreated, status.Ready.INVALID_SPEC, "spec.duration 'forever' is not a duration")
        assert len(kube.statuses) == 3
        await asyncio.gather(*list(r._tasks), return_exceptions=True)
    asyncio.run(run())
