"""The pod-certificate signer's rules (podcert.py) and its trust bundle's records (clustertrustbundle.py), without a
cluster: what is signed and what is denied, and that every issued status meets the API server's validation."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_operator import ca as ca_mod
from mtls_operator import clustertrustbundle, pki, podcert, podsigner, policy, rotation
from mtls_operator.config import Settings
from tests.unit.conftest import NOW

SIGNER = podcert.DEFAULT_SIGNER


def stub(key) -> str:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
    return base64.b64encode(csr.public_bytes(Encoding.DER)).decode()


def request_body(key=None, namespace: str = "shop", annotations: dict | None = None, max_seconds: int = 86400,
                 **status) -> dict:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return {"metadata": {"namespace": namespace, "name": "req-abc", "uid": "uid-1", "resourceVersion": "7"},
            "spec": {"signerName": SIGNER, "podName": "web-1", "podUID": "pod-uid", "serviceAccountName": "web",
                     "maxExpirationSeconds": max_seconds, "stubPKCS10Request": stub(key),
                     **({"unverifiedUserAnnotations": annotations} if annotations is not None else {})},
            "status": status}


def decide(body: dict, enabled: bool = True, rules=(), max_lifetime=dt.timedelta(hours=24)):
    return podcert.decide(podcert.parse(body), signer=SIGNER, namespace_enabled=enabled, namespace_rule="label x=y",
                          rules=rules, trust_domain="cluster.local", cluster_domain="cluster.local",
                          max_lifetime=max_lifetime)


@pytest.mark.parametrize("key,kind", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSAP256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ECDSAP384"),
    (lambda: rsa.generate_private_key(65537, 3072), "RSA3072"),
    (ed25519.Ed25519PrivateKey.generate, "ED25519"),
])
def test_the_pod_gets_its_own_service_accounts_spiffe_id_and_nothing_else(key, kind) -> None:
    decision = decide(request_body(key()))
    assert isinstance(decision, podcert.Sign), decision
    assert decision.key_type == kind
    assert decision.leaf.spiffe_id == "spiffe://cluster.local/ns/shop/sa/web"
    assert decision.leaf.dns_names == () and decision.leaf.server and decision.leaf.client


def test_unsupported_key_type_is_denied_with_a_suggestion() -> None:
    decision = decide(request_body(ec.generate_private_key(ec.SECP521R1())))
    assert decision == podcert.Deny(podcert.UNSUPPORTED_KEY_TYPE, decision.message)
    assert "ECDSAP521" in decision.message and "keyType: ECDSAP256" in decision.message


def test_namespaces_must_opt_in() -> None:
    decision = decide(request_body(), enabled=False)
    assert isinstance(decision, podcert.Deny) and decision.reason == podcert.NAMESPACE_NOT_ENABLED
    assert "shop" in decision.message and "label x=y" in decision.message and "recreated" in decision.message


def test_unknown_annotation_keys_are_denied() -> None:
    decision = decide(request_body(annotations={"example.com/role": "admin", podcert.ANN_DNS_NAMES: "web.shop.svc"}))
    assert isinstance(decision, podcert.Deny) and decision.reason == podcert.INVALID_ANNOTATIONS
    assert "example.com/role" in decision.message


def test_dns_names_follow_the_same_policy_as_an_identity() -> None:
    ok = decide(request_body(annotations={podcert.ANN_DNS_NAMES: "web.shop.svc, web.shop.svc.cluster.local"}))
    assert isinstance(ok, podcert.Sign) and ok.leaf.dns_names == ("web.shop.svc", "web.shop.svc.cluster.local")
    for name in ("vault", "web.other.svc", "Web.shop.svc"):
        denied = decide(request_body(annotations={podcert.ANN_DNS_NAMES: name}))
        assert isinstance(denied, podcert.Deny) and name in denied.message, (name, denied)
    grant = policy.parse_rule({"metadata": {"name": "g"}, "spec": {"namespaces": ["shop"], "dnsNames": ["vault"]}})
    assert isinstance(decide(request_body(annotations={podcert.ANN_DNS_NAMES: "vault"}), rules=[grant]), podcert.Sign)


def test_an_unreadable_stub_is_denied() -> None:
    body = request_body()
    body["spec"]["stubPKCS10Request"] = ""
    decision = decide(body)
    assert isinstance(decision, podcert.Deny) and decision.reason == podcert.INVALID_REQUEST


@pytest.mark.parametrize("max_seconds,max_lifetime,expected", [
    (86400, dt.timedelta(hours=24), dt.timedelta(hours=24)),
    (3600, dt.timedelta(hours=24), dt.timedelta(hours=1)),
    (86400 * 30, dt.timedelta(hours=24), dt.timedelta(hours=24)),
])
def test_issued_status_meets_the_api_servers_rules(root: ca_mod.CA, max_seconds, max_lifetime, expected) -> None:
    """The rules of ValidatePodCertificateRequestStatusUpdate, checked on what we would write."""
    key = ec.generate_private_key(ec.SECP256R1())
    body = request_body(key, max_seconds=max_seconds)
    decision = decide(body, max_lifetime=max_lifetime)
    assert decision.lifetime == expected
    now = NOW.replace(microsecond=0)
    back, duration = podcert.validity(now, root.cert.not_valid_before_utc, decision.lifetime, Settings().backdate)
    cert = pki.issue_leaf(dataclasses.replace(decision.leaf, duration=duration), decision.public_key, root.cert,
                          root.key, now, back)
    status = podcert.issued_status(cert, root.chain_pem(), "uid-1", now, Settings().pod_cert_refresh)
    chain = pki.load_chain(status["certificateChain"].encode())
    leaf = chain[0]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert status["notBefore"] == leaf.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["notAfter"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == expected <= dt.timedelta(seconds=max_seconds) and lifetime >= podcert.MIN_LIFETIME
    assert abs(leaf.not_valid_before_utc - now) < dt.timedelta(minutes=5)
    refresh = dt.datetime.fromisoformat(status["beginRefreshAt"].replace("Z", "+00:00"))
    assert leaf.not_valid_before_utc + dt.timedelta(minutes=10) <= refresh
    assert refresh <= leaf.not_valid_after_utc - dt.timedelta(minutes=10)
    assert [c["type"] for c in status["conditions"]] == ["Issued"]
    assert all(c["status"] == "True" and c["reason"] and c["lastTransitionTime"] for c in status["conditions"])
    assert pki.spiffe_ids(leaf) == ("spiffe://cluster.local/ns/shop/sa/web",)
    assert "PRIVATE KEY" not in status["certificateChain"]


def test_refresh_is_spread_around_two_thirds_and_inside_the_bounds() -> None:
    start = NOW
    for lifetime in (dt.timedelta(hours=1), dt.timedelta(hours=24)):
        times = [podcert.begin_refresh_at(start, start + lifetime, f"uid-{i}", Settings().pod_cert_refresh) - start
                 for i in range(200)]
        assert min(times) >= max(lifetime * 7 / 12 - dt.timedelta(seconds=1), dt.timedelta(minutes=10))
        assert max(times) <= lifetime * 9 / 12
        assert len(set(times)) > 100  # spread, not one instant for a fleet


@pytest.mark.parametrize("fraction,lo,hi", [
    (0.0, dt.timedelta(minutes=10), dt.timedelta(minutes=10)),  # as early as the API allows
    (0.5, dt.timedelta(hours=10), dt.timedelta(hours=14)),
    (1.0, dt.timedelta(hours=23, minutes=50), dt.timedelta(hours=23, minutes=50)),  # as late as it allows
])
def test_refresh_fraction_moves_the_refresh_and_the_api_bounds_hold(fraction, lo, hi) -> None:
    lifetime = dt.timedelta(hours=24)
    times = {podcert.begin_refresh_at(NOW, NOW + lifetime, f"uid-{i}", fraction) - NOW for i in range(50)}
    assert lo - dt.timedelta(seconds=1) <= min(times) and max(times) <= hi


def test_a_refresh_fraction_outside_zero_to_one_is_refused() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="pod-cert-refresh"):
            Settings(pod_cert_refresh=bad).check()


def test_answered_requests_are_never_touched_again() -> None:
    assert not podcert.settled(request_body())
    assert podcert.settled(request_body(certificateChain="-----BEGIN CERTIFICATE-----"))
    for kind in ("Issued", "Denied", "Failed"):
        assert podcert.settled(request_body(conditions=[{"type": kind, "status": "True"}]))


def test_denied_status_carries_only_the_condition() -> None:
    status = podcert.denied_status(podcert.Deny(podcert.POLICY_DENIED, "no"), NOW)
    assert set(status) == {"conditions"}
    assert status["conditions"][0] | {"lastTransitionTime": ""} == {
        "type": "Denied", "status": "True", "reason": "PolicyDenied", "message": "no", "lastTransitionTime": ""}


def test_cluster_trust_bundle_is_named_for_the_signer_and_holds_each_root_once(root: ca_mod.CA) -> None:
    assert clustertrustbundle.name_for(SIGNER) == "mtls-operator.io:spiffe:trust-anchors"
    body = clustertrustbundle.desired(SIGNER, root.bundle_pem + root.bundle_pem, {})
    assert body["spec"] == {"signerName": SIGNER, "trustBundle": pki.to_pem(root.cert).decode()}


def test_signing_records_are_coarse_and_drop_what_expired(root: ca_mod.CA) -> None:
    day = dt.timedelta(hours=24)
    marks = clustertrustbundle.record({}, "aa", NOW + day, day, NOW)
    assert marks == {"aa": NOW + day + day / 4}
    assert clustertrustbundle.record(marks, "aa", NOW + day + dt.timedelta(hours=5), day, NOW) is None
    later = NOW + dt.timedelta(days=3)
    assert clustertrustbundle.record(marks, "bb", later + day, day, later) == {"bb": later + day + day / 4}
    body = clustertrustbundle.desired(SIGNER, root.bundle_pem, marks)
    assert clustertrustbundle.signed_until(body) == marks


def test_retiring_keeps_the_old_root_until_its_pod_certificates_expire() -> None:
    timing = rotation.Timing(rotate_before=dt.timedelta(days=30), propagation=dt.timedelta(minutes=3),
                             grace=dt.timedelta(minutes=10))
    state = rotation.State(rotation.Phase.RETIRING, NOW, "", "")
    after_grace = NOW + dt.timedelta(minutes=11)
    far = NOW + dt.timedelta(days=3650)
    assert rotation.next_step(state, far, after_grace, timing, rotation.Progress(0, 0))[0] is rotation.Step.FINISH
    until = NOW + dt.timedelta(hours=30)
    held = rotation.next_step(state, far, after_grace, timing, rotation.Progress(0, 0, pod_certificates_until=until))
    assert held == (None, until)
    done = rotation.next_step(state, far, until, timing, rotation.Progress(0, 0, pod_certificates_until=until))
    assert done[0] is rotation.Step.FINISH


def test_signings_are_recorded_against_the_root_even_under_an_intermediate(root: ca_mod.CA) -> None:
    root_data = ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1))
    top = ca_mod.load(root_data, NOW)
    assert top.anchor_fingerprint == top.fingerprint
    below = ca_mod.load(ca_mod.new_intermediate(root_data, Settings(), NOW), NOW)
    assert below.fingerprint != top.fingerprint
    assert below.anchor_fingerprint == top.fingerprint


@pytest.mark.parametrize("selector,labels,expected", [
    ("mtls-operator.io/pod-certificates=enabled", {"mtls-operator.io/pod-certificates": "enabled"}, True),
    ("mtls-operator.io/pod-certificates=enabled", {"mtls-operator.io/pod-certificates": "yes"}, False),
    ("mtls-operator.io/pod-certificates==enabled,tier!=dev", {"mtls-operator.io/pod-certificates": "enabled"}, True),
    ("a=b,tier!=dev", {"a": "b", "tier": "dev"}, False),
    ("pods-ok", {"pods-ok": ""}, True), ("pods-ok", {}, False), ("!legacy", {"legacy": "x"}, False),
])
def test_the_last_look_before_a_denial_reads_the_selector_as_the_api_server_does(selector, labels, expected) -> None:
    assert podsigner.labels_match(selector, labels) is expected
