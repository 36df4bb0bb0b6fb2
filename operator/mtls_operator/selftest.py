"""`mtls-operator selftest`: proves issuance end to end against a running operator (the chart's `helm test`).

It creates a throw-away MtlsIdentity for its own ServiceAccount, waits for Ready, reads the Secret and judges it with
issuancecheck.py, then deletes the identity. The Secret has a fixed name (the test's Role may read that one Secret and
no other in the operator's namespace, where the CA's key lives), so a leftover of a killed earlier run — an identity
carrying the selftest label that owns that Secret — is deleted first. Prints one line; never key material.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from typing import Any, Protocol

from . import issuancecheck, tlssecret
from .spec import GROUP, KIND, VERSION

SELFTEST_LABEL = f"{GROUP}/selftest"
POLL = 1.0


class IdentityApi(Protocol):
    async def create_identity(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def get_identity(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def delete_identity(self, namespace: str, name: str) -> None: ...
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    namespace: str
    service_account: str
    secret_name: str
    trust_domain: str
    timeout: float
    name: str = dataclasses.field(default_factory=lambda: f"selftest-{uuid.uuid4().hex[:8]}")

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def identity(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": {SELFTEST_LABEL: "true"}},
            # Server and client usages (the default) with the default DNS names: names of the namespace's own
            # Services, which the default policy allows.
            "spec": {"secretName": self.secret_name, "serviceAccountName": self.service_account},
        }


class Failed(Exception):
    pass


def ready_condition(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Ready condition, if it speaks of the identity's current generation."""
    if not body:
        return None
    status = body.get("status") or {}
    if status.get("observedGeneration") not in (None, body.get("metadata", {}).get("generation")):
        return None
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)


async def _clear_leftover(api: IdentityApi, plan: Plan, deadline: float) -> None:
    secret = await api.get_secret(plan.namespace, plan.secret_name)
    if secret is None:
        return
    ref = tlssecret.controller_ref(secret)
    owner = await api.get_identity(plan.namespace, ref["name"]) if ref else None
    if owner is None or (owner.get("metadata", {}).get("labels") or {}).get(SELFTEST_LABEL) != "true":
        raise Failed(f"Secret {plan.namespace}/{plan.secret_name} exists and is not a selftest leftover")
    await api.delete_identity(plan.namespace, owner["metadata"]["name"])
    while await api.get_secret(plan.namespace, plan.secret_name) is not None:
        if time.monotonic() > deadline:
            raise Failed(f"a leftover Secret {plan.namespace}/{plan.secret_name} was not garbage-collected in time")
        await asyncio.sleep(POLL)


async def _wait_ready(api: IdentityApi, plan: Plan, deadline: float) -> dict[str, Any]:
    last = "no status yet"
    while True:
        body = await api.get_identity(plan.namespace, plan.name)
        if body is None:
            raise Failed(f"MtlsIdentity {plan.namespace}/{plan.name} disappeared")
        condition = ready_condition(body)
        if condition is not None:
            if condition.get("status") == "True":
                return body
            last = f"{condition.get('reason')}: {condition.get('message')}"
        if time.monotonic() > deadline:
            raise Failed(f"MtlsIdentity {plan.namespace}/{plan.name} not Ready after {plan.timeout:.0f}s ({last})")
        await asyncio.sleep(POLL)


async def run(api: IdentityApi, plan: Plan, clock=lambda: dt.datetime.now(dt.UTC)) -> str:
    """Returns the success line; raises Failed with the reason otherwise."""
    started = time.monotonic()
    deadline = started + plan.timeout
    await _clear_leftover(api, plan, deadline)
    await api.create_identity(plan.identity())
    try:
        body = await _wait_ready(api, plan, deadline)
        issued = time.monotonic() - started
        reported = (body.get("status") or {}).get("spiffeID")
        if reported != plan.spiffe_id:
            raise Failed(f"status.spiffeID is {reported!r}, expected {plan.spiffe_id!r}")
        secret = await api.get_secret(plan.namespace, plan.secret_name)
        if secret is None:
            raise Failed(f"Ready, but Secret {plan.namespace}/{plan.secret_name} does not exist")
        found = issuancecheck.problems(tlssecret.decode_data(secret), plan.spiffe_id, clock())
        if found:
            raise Failed(f"Secret {plan.namespace}/{plan.secret_name}: {'; '.join(found)}")
    finally:
        await api.delete_identity(plan.namespace, plan.name)
    return (f"MtlsIdentity {plan.namespace}/{plan.name} Ready in {issued:.1f}s; Secret {plan.secret_name}: "
            f"chain to ca.crt, key and SPIFFE ID {plan.spiffe_id} verified; identity deleted")
