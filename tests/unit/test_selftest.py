"""`mtls-operator selftest`: the outside judgement of an identity Secret (pure), and the run against a fake API."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest

from mtls_operator import ca as ca_mod
from mtls_operator import issuancecheck, pki, selftest, tlssecret
from mtls_operator.config import Settings

from .conftest import NOW

SPIFFE = "spiffe://cluster.local/ns/mtls-operator/sa/rel-mtls-operator-selftest"
HOUR = dt.timedelta(hours=1)


def _issue(authority: ca_mod.CA, spiffe_id: str = SPIFFE, now: dt.datetime = NOW,
           key: pki.PrivateKey | None = None) -> tuple[Any, pki.PrivateKey]:
    key = key or pki.generate_key("ECDSA", 256)
    request = pki.LeafRequest(spiffe_id, ["x.mtls-operator.svc"], [], True, True, dt.timedelta(hours=24))
    return pki.issue_leaf(request, key.public_key(), authority.cert, authority.key, now, dt.timedelta(minutes=5)), key


def secret_data(authority: ca_mod.CA, **override: bytes) -> dict[str, bytes]:
    cert, key = _issue(authority)
    data = {"tls.crt": pki.to_pem(cert) + authority.chain_pem(), "tls.key": pki.key_to_pem(key),
            "ca.crt": authority.bundle_pem}
    return {**data, **override}


@pytest.fixture(scope="module")
def intermediate(root: ca_mod.CA) -> ca_mod.CA:
    root_data = {"tls.crt": pki.to_pem(root.cert), "tls.key": pki.key_to_pem(root.key), "ca.crt": root.bundle_pem}
    return ca_mod.load(ca_mod.new_intermediate(root_data, Settings(), NOW - HOUR), NOW)


def test_a_good_secret_has_no_problems(root: ca_mod.CA) -> None:
    assert issuancecheck.problems(secret_data(root), SPIFFE, NOW) == []


def test_a_leaf_from_an_intermediate_chains_through_tls_crt(intermediate: ca_mod.CA) -> None:
    data = secret_data(intermediate)
    assert len(pki.load_chain(data["tls.crt"])) == 2
    assert issuancecheck.problems(data, SPIFFE, NOW) == []
    leaf_only = pki.to_pem(pki.load_chain(data["tls.crt"])[0])
    assert issuancecheck.problems({**data, "tls.crt": leaf_only}, SPIFFE, NOW) == [
        "tls.crt does not chain to any certificate in ca.crt"]


def test_another_roots_bundle_is_caught(root: ca_mod.CA) -> None:
    other = ca_mod.load(ca_mod.new_root(Settings(), NOW - HOUR), NOW)
    found = issuancecheck.problems(secret_data(root, **{"ca.crt": other.bundle_pem}), SPIFFE, NOW)
    assert found == ["tls.crt does not chain to any certificate in ca.crt"]


def test_a_foreign_key_is_caught_and_never_quoted(root: ca_mod.CA) -> None:
    stranger = pki.key_to_pem(pki.generate_key("ECDSA", 256))
    found = issuancecheck.problems(secret_data(root, **{"tls.key": stranger}), SPIFFE, NOW)
    assert found == ["tls.key does not belong to the certificate in tls.crt"]
    garbage = issuancecheck.problems(secret_data(root, **{"tls.key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n"}),
                                     SPIFFE, NOW)
    assert garbage == ["tls.key is not an unencrypted PEM private key"]
    assert not any("PRIVATE" in m or "AAAA" in m for m in found + garbage)


def test_the_wrong_spiffe_id_is_caught(root: ca_mod.CA) -> None:
    cert, key = _issue(root, spiffe_id="spiffe://cluster.local/ns/mtls-operator/sa/someone-else")
    data = secret_data(root, **{"tls.crt": pki.to_pem(cert), "tls.key": pki.key_to_pem(key)})
    assert issuancecheck.problems(data, SPIFFE, NOW) == [
        "the leaf's URI SANs are ['spiffe://cluster.local/ns/mtls-operator/sa/someone-else'], "
        f"expected exactly [{SPIFFE!r}]"]


def test_expiry_and_missing_fields_are_caught(root: ca_mod.CA) -> None:
    found = issuancecheck.problems(secret_data(root), SPIFFE, NOW + dt.timedelta(days=2))
    assert len(found) == 1 and found[0].startswith("the leaf is outside its validity")
    assert issuancecheck.problems({"tls.crt": b"x"}, SPIFFE, NOW) == ["the Secret lacks tls.key, ca.crt"]
    assert issuancecheck.problems(secret_data(root, **{"tls.crt": b"junk"}), SPIFFE, NOW) == [
        "tls.crt holds no readable PEM certificate"]


# ---- the run, against a fake API that plays the operator ----

class FakeApi:
    def __init__(self, authority: ca_mod.CA, spiffe_id: str = SPIFFE, ready_after: int = 2) -> None:
        self.authority, self.spiffe_id, self.ready_after = authority, spiffe_id, ready_after
        self.identities: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.gets = 0
        self.deleted: list[str] = []

    async def create_identity(self, body: dict[str, Any]) -> dict[str, Any]:
        self.identities[body["metadata"]["name"]] = {**body, "metadata": {**body["metadata"], "generation": 1}}
        return body

    async def get_identity(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.identities.get(name)
        self.gets += 1
        if body is not None and self.gets >= self.ready_after and "status" not in body:
            secret_name = body["spec"]["secretName"]
            self.secrets[secret_name] = {"metadata": {"ownerReferences": [
                {"kind": "MtlsIdentity", "apiVersion": "mtls-operator.io/v1alpha1", "name": name, "controller": True}]},
                "data": {k: tlssecret.b64(v) for k, v in secret_data(self.authority).items()}}
            body["status"] = {"observedGeneration": 1, "spiffeID": self.spiffe_id,
                              "conditions": [{"type": "Ready", "status": "True", "reason": "Issued"}]}
        return body

    async def delete_identity(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        body = self.identities.pop(name, None)
        if body:
            self.secrets.pop(body["spec"]["secretName"], None)

    async def get_secret(self, namespace: str, name: str, not_older_than: str = "") -> dict[str, Any] | None:
        return self.secrets.get(name)


def _plan(**changes: Any) -> selftest.Plan:
    plan = selftest.Plan(namespace="mtls-operator", service_account="rel-mtls-operator-selftest",
                         secret_name="rel-mtls-operator-selftest-mtls", trust_domain="cluster.local", timeout=5)
    return dataclasses.replace(plan, **changes)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "POLL", 0.01)


def test_the_run_creates_waits_verifies_and_deletes(root: ca_mod.CA) -> None:
    api, plan = FakeApi(root), _plan()
    assert plan.spiffe_id == SPIFFE
    line = asyncio.run(selftest.run(api, plan, clock=lambda: NOW))
    assert plan.name in line and SPIFFE in line and "verified" in line
    assert api.deleted == [plan.name] and not api.identities
    created_spec = plan.identity()["spec"]
    assert created_spec == {"secretName": plan.secret_name, "serviceAccountName": plan.service_account}


def test_a_wrong_status_spiffe_id_fails_and_still_deletes(root: ca_mod.CA) -> None:
    api, plan = FakeApi(root, spiffe_id="spiffe://elsewhere/ns/x/sa/y"), _plan()
    with pytest.raises(selftest.Failed, match=r"status\.spiffeID"):
        asyncio.run(selftest.run(api, plan, clock=lambda: NOW))
    assert api.deleted == [plan.name]


def test_never_ready_times_out_with_the_last_reason(root: ca_mod.CA) -> None:
    class Denied(FakeApi):
        async def get_identity(self, namespace: str, name: str) -> dict[str, Any] | None:
            body = self.identities.get(name)
            if body is not None:
                body["status"] = {"observedGeneration": 1, "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PolicyDenied", "message": "no"}]}
            return body

    api = Denied(root)
    with pytest.raises(selftest.Failed, match=r"not Ready after 0s \(PolicyDenied: no\)"):
        asyncio.run(selftest.run(api, _plan(timeout=0.05), clock=lambda: NOW))
    assert api.deleted


def test_a_leftover_of_a_killed_run_is_cleared_but_nothing_else(root: ca_mod.CA) -> None:
    api, plan = FakeApi(root), _plan()
    stale = dataclasses.replace(plan, name="selftest-old")
    asyncio.run(api.create_identity(stale.identity()))
    asyncio.run(api.get_identity(stale.namespace, stale.name))  # the operator issued for it
    asyncio.run(api.get_identity(stale.namespace, stale.name))
    assert plan.secret_name in api.secrets
    asyncio.run(selftest.run(api, plan, clock=lambda: NOW))
    assert api.deleted == ["selftest-old", plan.name]

    foreign = FakeApi(root)
    foreign.secrets[plan.secret_name] = {"metadata": {}, "data": {}}
    with pytest.raises(selftest.Failed, match="not a selftest leftover"):
        asyncio.run(selftest.run(foreign, _plan(), clock=lambda: NOW))
    assert foreign.deleted == []
