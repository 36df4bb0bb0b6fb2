"""plan.standing, a restart's shortcut past reading a Secret's data: it must never say "nothing to do" where decide(),
given the data, would act, and it must agree with decide() on when to look next."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from mtls_operator import ca as ca_mod
from mtls_operator import pki, plan, spec, status, tlssecret
from mtls_operator.config import Settings

from .conftest import NOW, UID, issue_body

LATER = NOW + dt.timedelta(minutes=1)


def _identity(ident: spec.IdentitySpec, body: dict, *, version: str = "7", generation: int = 1,
              annotations: dict | None = None) -> dict:
    """The MtlsIdentity as the operator leaves it after writing `body` (at resourceVersion 7)."""
    view = tlssecret.read(body, UID)
    renewal = plan.renewal_time(view.cert.not_valid_after_utc, ident, view.cert.serial_number)
    state = status.healthy({}, ident.secret_name, ident.spiffe_id, view.cert, renewal, view.revision,
                           view.annotations[tlssecret.ANN_ISSUER], generation, NOW, version)
    return {"metadata": {"name": ident.name, "namespace": ident.namespace, "uid": UID, "generation": generation,
                         "annotations": annotations or {}},
            "status": state}


def _meta(body: dict) -> dict:
    """What a metadata-only list shows of the Secret."""
    return dict(body["metadata"])


def test_an_unchanged_secret_stands_until_the_renewal_decide_would_give(identity, root) -> None:
    body = issue_body(identity, root)
    found = plan.standing(identity, _meta(body), _identity(identity, body), root, LATER)
    decided = plan.decide(identity, tlssecret.read(body, UID), root, LATER)
    assert decided.action is plan.Action.NONE
    assert found == plan.Standing(tlssecret.read(body, UID).cert.not_valid_after_utc, decided.renewal_time)


def _other_root() -> ca_mod.CA:
    return ca_mod.load(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1)), NOW)


@pytest.mark.parametrize("change", [
    "secret version", "not ready", "generation", "new issuer", "new bundle", "new chain", "spec", "renew request",
    "labels", "template annotation", "due", "legacy roots", "restart targets", "no status version",
])
def test_anything_the_metadata_cannot_vouch_for_means_a_read(identity, root, change) -> None:
    ident, authority, now = identity, root, LATER
    body = issue_body(ident, root)
    obj = _identity(ident, body)
    meta = _meta(body)
    if change == "secret version":
        meta["resourceVersion"] = "8"  # edited since the operator wrote it
    elif change == "no status version":
        del obj["status"]["secretResourceVersion"]  # written by an operator before this field
    elif change == "not ready":
        obj["status"]["conditions"][0]["status"] = "False"
    elif change == "generation":
        obj["metadata"]["generation"] = 2
    elif change == "new issuer":
        authority = _other_root()
    elif change == "new bundle":
        authority = dataclasses.replace(root, bundle_pem=root.bundle_pem + pki.to_pem(_other_root().cert))
    elif change == "new chain":
        authority = dataclasses.replace(root, chain=(_other_root().cert,))
    elif change == "spec":
        ident = spec.parse("payments", "api", {"dnsNames": ["api.example"]}, Settings())
    elif change == "renew request":
        obj["metadata"]["annotations"] = {tlssecret.ANN_RENEW_REQUEST: "now"}
    elif change == "labels":
        ident = spec.parse("payments", "api", {"secretTemplate": {"labels": {"team": "a"}}}, Settings())
    elif change == "template annotation":
        ident = spec.parse("payments", "api", {"secretTemplate": {"annotations": {"team": "a"}}}, Settings())
    elif change == "due":
        now = plan.decide(ident, tlssecret.read(body, UID), root, LATER).renewal_time
    elif change == "legacy roots":
        authority = dataclasses.replace(root, legacy_roots=(_other_root().cert,))
    elif change == "restart targets":
        ident = dataclasses.replace(ident, restart_targets=(("Deployment", "api"),))
    if ident is not identity and change in ("labels", "template annotation"):
        obj = _identity(ident, body)  # same uid and name: only the template differs
    assert plan.standing(ident, meta, obj, authority, now) is None
    if change not in ("secret version", "no status version", "not ready", "generation", "legacy roots",
                      "restart targets"):
        # What the shortcut declines is what decide() acts on, given the data.
        asked = obj["metadata"]["annotations"].get(tlssecret.ANN_RENEW_REQUEST, "")
        assert plan.decide(ident, tlssecret.read(body, UID), authority, now, asked).action is not plan.Action.NONE


def test_a_handled_renew_request_stands(identity, root) -> None:
    key = pki.generate_key("ECDSA", 256)
    request = pki.LeafRequest(identity.spiffe_id, identity.dns_names, identity.ip_addresses, identity.server,
                              identity.client, identity.duration)
    cert = pki.issue_leaf(request, key.public_key(), root.cert, root.key, NOW, dt.timedelta(minutes=5))
    body = tlssecret.build(identity, UID, cert, key, root.chain_pem(), root.bundle_pem,
                           tlssecret.record(identity, cert, root.fingerprint, 2, "now"), "7")
    body["metadata"]["resourceVersion"] = "7"
    obj = _identity(identity, body, annotations={tlssecret.ANN_RENEW_REQUEST: "now"})
    assert plan.standing(identity, _meta(body), obj, root, LATER) is not None


def test_written_secrets_carry_the_digests_of_their_trust_material(identity, root) -> None:
    body = issue_body(identity, root)
    annotations = body["metadata"]["annotations"]
    assert annotations[tlssecret.ANN_BUNDLE] == root.bundle_digest == pki.digest(root.bundle_pem)
    assert annotations[tlssecret.ANN_CHAIN] == root.chain_digest == pki.digest(root.chain_pem())


def test_the_status_records_the_secret_version_only_when_written(identity, root) -> None:
    body = issue_body(identity, root)
    cert = tlssecret.read(body, UID).cert
    kept = status.healthy({"secretResourceVersion": "3"}, identity.secret_name, identity.spiffe_id, cert, None, 1,
                          root.fingerprint, 1, NOW)
    assert "secretResourceVersion" not in kept  # a merge patch leaves the recorded version as it is
    assert status.healthy({}, identity.secret_name, identity.spiffe_id, cert, None, 1, root.fingerprint, 1, NOW,
                          "9")["secretResourceVersion"] == "9"
