"""`kubectl mtls inspect secret`, the pure part: real Secrets made with the operator's pki.py — good, with a swapped
key, from another CA of the same name, expired, with an intermediate, broken — and the report on each, in text and
JSON, with no key material anywhere."""

from __future__ import annotations

import base64
import datetime as dt
import json

from mtls_operator import pki
from mtls_operator.kubectl_mtls import inspect, render
from tests.unit.kubectl_mtls_material import (
    NOW,
    assert_no_key_material,
    intermediate,
    issue,
    root,
    with_key,
)


def _bundle(authority=None, source: str = "ConfigMap payments/mtls-trust-bundle") -> inspect.TrustBundle:
    return inspect.TrustBundle.from_pem(source, (authority or root()).bundle_pem)


def _outputs(report: inspect.SecretReport) -> str:
    return render.secret(report) + "\n" + json.dumps(report.to_dict())


def test_a_good_secret_is_described_and_verified_twice() -> None:
    issued = issue()
    report = inspect.inspect("payments", "api-mtls", issued.body, _bundle(), NOW)
    assert report.ok, report.problems
    assert report.owner == "MtlsIdentity api" and report.secret_type == "kubernetes.io/tls"
    assert report.spiffe_ids == ("spiffe://cluster.local/ns/payments/sa/api",)
    assert report.dns_names == ("api.payments", "api.payments.svc", "api.payments.svc.cluster.local")
    assert report.extended_key_usage == ("serverAuth", "clientAuth")
    assert report.key.present and report.key.type == "ECDSA-256" and report.key.matches_certificate is True
    assert report.chain[0].serial == pki.serial_hex(issued.cert) and report.chain[0].window(NOW) == "valid"
    assert report.own.verified is True and report.cluster.verified is True
    assert report.cluster.against == "ConfigMap payments/mtls-trust-bundle"
    assert report.own.anchor_fingerprint == root().fingerprint == report.cluster.anchor_fingerprint
    text = render.secret(report)
    assert "matches the certificate" in text and "Verdict: OK" in text
    assert "against the cluster's trust bundle (ConfigMap payments/mtls-trust-bundle): OK" in text
    assert_no_key_material(_outputs(report), issued.key_pem)


def test_a_swapped_key_is_named_without_showing_either_key() -> None:
    issued = issue()
    other = pki.generate_key("ECDSA", 256)
    swapped = with_key(issued, other)
    report = inspect.inspect("payments", "api-mtls", swapped.body, _bundle(), NOW)
    assert not report.ok
    assert report.key.matches_certificate is False
    assert "tls.key does not belong to the certificate in tls.crt" in report.problems
    assert report.own.verified and report.cluster.verified  # the certificate itself is fine
    assert "DOES NOT match" in render.secret(report)
    outputs = _outputs(report)
    assert_no_key_material(outputs, swapped.key_pem)
    assert_no_key_material(outputs, issued.key_pem)


def test_another_ca_of_the_same_name_is_told_apart_by_its_key() -> None:
    """ca.crt holding another root with the very same name (another cluster's, or a rotated one): names match,
    signatures do not."""
    other = root("b")
    assert other.cert.subject == root().cert.subject and other.fingerprint != root().fingerprint
    issued = issue(ca_pem=other.bundle_pem)
    report = inspect.inspect("payments", "api-mtls", issued.body, _bundle(), NOW)
    assert report.own.verified is False and report.cluster.verified is True
    assert "but another key signed the leaf" in report.own.problems[0]
    assert any(p.startswith("against ca.crt:") for p in report.problems)

    # And the other way round: the Secret is self-consistent, but the cluster now trusts another root.
    report = inspect.inspect("payments", "api-mtls", issue().body, _bundle(other), NOW)
    assert report.own.verified is True and report.cluster.verified is False
    assert any(p.startswith("against the cluster's trust bundle:") for p in report.problems)
    assert "FAILED" in render.secret(report)


def test_an_expired_certificate_is_reported() -> None:
    issued = issue(now=NOW - dt.timedelta(days=2), duration="1h")
    report = inspect.inspect("payments", "api-mtls", issued.body, _bundle(), NOW)
    assert not report.ok
    assert report.chain[0].window(NOW) == "expired"
    assert any(p.startswith("the certificate is expired") for p in report.problems)
    assert report.own.verified is False and "the leaf is expired" in report.own.problems[0]
    assert "expired" in render.secret(report)


def test_an_intermediate_chain_verifies_to_the_root() -> None:
    issuing = intermediate()
    issued = issue(issuing)
    report = inspect.inspect("payments", "api-mtls", issued.body, _bundle(issuing), NOW)
    assert report.ok, report.problems
    assert len(report.chain) == 2 and report.chain[1].is_ca
    assert len(report.own.path) == 3  # leaf, intermediate, root
    assert report.own.anchor_fingerprint == pki.fingerprint(pki.load_chain(issuing.bundle_pem)[0])


def test_the_authoritys_anchors_by_fingerprint_stand_in_for_a_missing_configmap() -> None:
    issued = issue()
    authority = {"metadata": {"name": "mtls-operator.mtls-operator-ca"},
                 "status": {"trustAnchors": [{"subject": "x", "fingerprint": root().fingerprint}]}}
    trust = inspect.TrustBundle.from_authorities([authority], note="ConfigMap payments/mtls-trust-bundle not found")
    report = inspect.inspect("payments", "api-mtls", issued.body, trust, NOW)
    assert report.ok and report.cluster.verified is True
    assert report.cluster.against.startswith("MtlsAuthority mtls-operator.mtls-operator-ca")
    assert "not found" in report.cluster.note

    # An authority that lists another root: the Secret's own ca.crt cannot stand in for it.
    authority["status"]["trustAnchors"] = [{"fingerprint": root("b").fingerprint}]
    report = inspect.inspect("payments", "api-mtls", issued.body, inspect.TrustBundle.from_authorities([authority]),
                             NOW)
    assert report.cluster.verified is False and "none of the certificates" in report.cluster.problems[0]


def test_no_cluster_bundle_is_said_and_is_not_a_failure_of_the_secret() -> None:
    trust = inspect.TrustBundle(source="", unavailable="no MtlsAuthority lists trust anchors")
    report = inspect.inspect("payments", "api-mtls", issue().body, trust, NOW)
    assert report.ok and report.cluster.verified is None
    assert "NOT CHECKED" in render.secret(report)
    assert report.to_dict()["verification"]["cluster"]["verified"] is None


def test_broken_data_is_reported_not_raised() -> None:
    body = {"type": "Opaque", "metadata": {"name": "junk"},
            "data": {"tls.crt": base64.b64encode(b"garbage").decode(), "tls.key": "!!not base64!!"}}
    report = inspect.inspect("payments", "junk", body, _bundle(), NOW)
    assert not report.ok
    assert report.chain == () and report.key.present is False
    assert any(p.startswith("tls.crt:") for p in report.problems)
    assert any(p.startswith("ca.crt:") for p in report.problems)
    render.secret(report)
    json.dumps(report.to_dict())

    # A key that is not a key: named as such, with none of its bytes.
    issued = issue()
    bad = {**issued.body, "data": {**issued.body["data"], "tls.key": base64.b64encode(
        b"-----BEGIN PRIVATE KEY-----\nAAAAsecretsecretsecretsecret\n-----END PRIVATE KEY-----\n").decode()}}
    report = inspect.inspect("payments", "api-mtls", bad, _bundle(), NOW)
    assert report.key.present and report.key.matches_certificate is None and "tls.key" in report.key.problem
    assert "secretsecret" not in _outputs(report)


def test_an_rsa_key_is_named_and_matched() -> None:
    issued = issue(algorithm="RSA")
    report = inspect.inspect("payments", "api-mtls", issued.body, _bundle(), NOW)
    assert report.key.type == "RSA-2048" and report.key.matches_certificate is True
    assert report.chain[0].public_key == "RSA-2048"
    assert_no_key_material(_outputs(report), issued.key_pem)


def test_the_json_shape_is_stable() -> None:
    report = inspect.inspect("payments", "api-mtls", issue().body, _bundle(), NOW).to_dict()
    assert list(report) == ["kind", "namespace", "name", "ok", "type", "owner", "chain", "caBundle", "sans",
                            "extendedKeyUsage", "publicKeySha256", "key", "verification", "problems"]
    assert report["kind"] == "SecretInspection"
    assert set(report["chain"][0]) == {"subject", "issuer", "serialNumber", "notBefore", "notAfter", "validity",
                                       "sha256", "isCA", "publicKey"}
    assert set(report["sans"]) == {"spiffeIDs", "uris", "dnsNames", "ipAddresses"}
    assert set(report["key"]) == {"present", "type", "matchesCertificate", "problem"}
    assert set(report["verification"]) == {"caCrt", "cluster"}
    assert set(report["verification"]["cluster"]) == {"against", "verified", "path", "anchorSha256", "problems",
                                                      "note"}
